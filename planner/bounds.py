"""Reference budgets of DESIGN §3: M_R, M_P, M_H, and the compulsory traffic.

Preconditions: a linted graph, views folded; sizes are the problem's (after the target's
dtype overrides, weights only when tracked).

No-spill memory of a schedule. Every tensor is resident from its first use to its last:
an activation from its producer's step, an input or tracked weight from its first
consumer's step (loaded just before), each until its last consumer's step. For the chain
x -a-> y -b-> z with 1-byte x, 2-byte y, 4-byte z:

    step   a       b
    live   x,y=3   y,z=6        peak 6

M_P is the least peak over all topological orders. `min_peak` finds it with the
hierarchical scheduler of `planner.schedule`: a dynamic programme over the sets of ops
already scheduled (Serenity, arXiv 2003.02369) per segment between forced cuts, and
exact re-ordering of windows where that explodes. When it cannot prove optimality the
result is an upper bound, labelled as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from planner.errors import Infeasible
from planner.ir import Bytes
from planner.problem import Problem


def m_r(problem: Problem) -> tuple[Bytes, str]:
    """The smallest capacity any plan needs, and the op that sets it.

    Each op needs its tracked inputs and outputs resident at once (DESIGN §3); see
    `Problem.footprint` for the alignment padding.
    """
    best, name = 0, ""
    for op in problem.graph.ops:
        f = problem.footprint(op)
        if f > best:
            best, name = f, op.name
    return best, name


def check_budget(problem: Problem) -> None:
    """Raises Infeasible, naming the op and M_R, when the budget is below M_R."""
    need, op = m_r(problem)
    if problem.capacity < need:
        kind = problem.graph.op(op).type  # the type too: users find 'n14' in their model as a Sum
        raise Infeasible(f"budget {problem.capacity} B is below M_R = {need} B, set by op {op!r} ({kind}; "
                         f"its inputs and outputs must be resident together)", op=op, minimum=need)


# A solver's `lower_bound` parameter: bytes of non-compulsory traffic no plan beats, or a
# function giving the best such bound known so far (`solvers.lower.Beside`, a bound
# computed in another process while the solver runs), or None (nothing known).
LowerBound = Union[float, Callable[[], float], None]


def known(lower_bound: LowerBound) -> float:
    """The bytes a `LowerBound` stands for now (0 for None)."""
    if lower_bound is None:
        return 0.0
    return float(lower_bound() if callable(lower_bound) else lower_bound)


def live_bytes(problem: Problem, order: list[str]) -> list[Bytes]:
    """Resident bytes at each step of `order` with no spilling (see module docstring)."""
    pos = {name: i for i, name in enumerate(order)}
    delta = [0] * (len(order) + 1)
    for n, size in problem.sizes.items():
        t = problem.graph.tensors[n]
        uses = [pos[c] for c in t.consumers] + ([pos[t.producer]] if t.producer else [])
        if not uses:
            continue
        delta[min(uses)] += size
        delta[max(uses) + 1] -= size
    out, run = [], 0
    for d in delta[:-1]:
        run += d
        out.append(run)
    return out


def peak_bytes(problem: Problem, order: list[str]) -> Bytes:
    return max(live_bytes(problem, order), default=0)


@dataclass
class MinPeak:
    peak: Bytes  # the best no-spill peak found
    order: list[str]  # a schedule reaching it
    exact: bool  # True: peak is M_P; False: an upper bound on M_P
    states: int  # sets of ops explored
    seconds: float
    method: str = "dp"  # "dp" (one DP), "segments" (DP per forced segment), "windows" (windowed DP)


def min_peak(problem: Problem, beam: int = 20_000, time_limit: float | None = 60.0) -> MinPeak:
    """M_P and a schedule reaching it; exact unless a DP outgrew `beam` or time ran out.

    The hierarchical scheduler of `planner.schedule`: forced cuts split the graph, each
    segment gets the exact DP, and segments where it explodes are improved window by
    window from the best of file order, reverse post-order and a greedy order, so the
    result never exceeds any of their peaks.
    """
    from planner import schedule  # a planner module: no solver import (DESIGN §2)

    r = schedule.min_peak(problem, beam=beam, time_limit=time_limit)
    return MinPeak(r.peak, r.order, r.exact, r.states, r.seconds, r.method)


@dataclass
class Budgets:
    m_r: Bytes
    m_r_op: str  # the op that sets M_R
    m_p: Bytes
    m_p_exact: bool  # False: m_p is the best peak found, an upper bound on M_P
    m_h: Bytes
    compulsory: Bytes
    order: list[str]  # a schedule reaching m_p

    def get(self, name: str) -> Bytes:
        return {"M_R": self.m_r, "M_P": self.m_p, "M_H": self.m_h}[name]


def budgets(problem: Problem, beam: int = 20_000, time_limit: float | None = 60.0) -> Budgets:
    """M_R, M_P (exact or labelled upper bound), M_H = (M_R + M_P) // 2, compulsory bytes.

    M_P is at least M_R: the least peak counts bytes unpadded, while M_R pads all but
    one tensor of its op to the alignment, and that op must run whatever the order.
    """
    r, op = m_r(problem)
    mp = min_peak(problem, beam=beam, time_limit=time_limit)
    m_p = max(mp.peak, r)
    return Budgets(r, op, m_p, mp.exact, (r + m_p) // 2, problem.compulsory_bytes(), mp.order)
