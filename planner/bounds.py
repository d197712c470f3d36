"""Reference budgets of DESIGN §3: M_R, M_P, M_H, and the compulsory traffic.

Preconditions: a linted graph, views folded; sizes are the problem's (after the target's
dtype overrides, weights only when tracked).

No-spill memory of a schedule. Every tensor is resident from its first use to its last:
an activation from its producer's step, an input or tracked weight from its first
consumer's step (loaded just before), each until its last consumer's step. For the chain
x -a-> y -b-> z with 1-byte x, 2-byte y, 4-byte z:

    step   a       b
    live   x,y=3   y,z=6        peak 6

M_P is the least peak over all topological orders. `min_peak` finds it with a dynamic
programme over the sets of ops already scheduled (Serenity, arXiv 2003.02369): the live
bytes after a set do not depend on the order inside it, so the best peak to reach each
set is all that must be kept. Sets are explored level by level (by size); when a level
outgrows `beam` the best `beam` sets are kept and the result becomes an upper bound,
labelled as such.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

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
        raise Infeasible(f"budget {problem.capacity} B is below M_R = {need} B, set by op {op!r} "
                         f"(its inputs and outputs must be resident together)", op=op, minimum=need)


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


def min_peak(problem: Problem, beam: int = 20_000, time_limit: float | None = 60.0) -> MinPeak:
    """M_P and a schedule reaching it; exact unless a level outgrew `beam` or time ran out.

    The graph's own order is the incumbent, so the result never exceeds its peak; sets
    whose peak already reaches the incumbent's are pruned, and a search that then ends
    with no full set proves the incumbent optimal.
    """
    t0 = time.perf_counter()
    g = problem.graph
    ops = g.ops
    index = {o.name: i for i, o in enumerate(ops)}
    sizes = problem.sizes
    # pred[i]: bitmask of ops producing i's inputs; succ[i]: ops reading i's outputs.
    pred = [0] * len(ops)
    succ: list[set[int]] = [set() for _ in ops]
    for i, o in enumerate(ops):
        for t in o.inputs:
            p = g.tensors[t].producer
            if p is not None:
                pred[i] |= 1 << index[p]
                succ[index[p]].add(i)
    # consumers as bitmasks, for "all consumers done" tests.
    cons = {n: sum(1 << index[c] for c in g.tensors[n].consumers) for n in sizes}
    # Per op: bytes that become live when it runs (outputs, first-used inputs) and may die.
    fresh_inputs = [[t for t in o.inputs if t in sizes and g.tensors[t].producer is None] for o in ops]
    outs = [[t for t in o.outputs if t in sizes] for o in ops]
    ins = [[t for t in o.inputs if t in sizes] for o in ops]

    file_order = [o.name for o in ops]
    best_peak, best_order = peak_bytes(problem, file_order), file_order
    exact, states = True, 0

    # level: mask -> (peak, live, ready ops); parents[k]: mask -> (parent mask, op index)
    level: dict[int, tuple[Bytes, Bytes, tuple[int, ...]]] = {0: (0, 0, tuple(i for i in range(len(ops)) if pred[i] == 0))}
    parents: list[dict[int, tuple[int, int]]] = []
    for _ in range(len(ops)):
        nxt: dict[int, tuple[Bytes, Bytes, tuple[int, ...]]] = {}
        back: dict[int, tuple[int, int]] = {}
        for mask, (pk, live, ready) in level.items():
            for i in ready:
                bit = 1 << i
                done = mask | bit
                new = sum(sizes[t] for t in fresh_inputs[i] if not cons[t] & mask) + sum(sizes[t] for t in outs[i])
                during = live + new
                p = max(pk, during)
                if p >= best_peak:  # cannot beat the incumbent (pruning)
                    continue
                old = nxt.get(done)
                if old is not None and old[0] <= p:
                    continue
                dead = sum(sizes[t] for t in ins[i] + outs[i] if cons[t] & ~done == 0)
                rdy = tuple(j for j in ready if j != i) + tuple(
                    j for j in succ[i] if pred[j] & ~done == 0 and not (1 << j) & done)
                nxt[done] = (p, during - dead, rdy)
                back[done] = (mask, i)
        states += len(nxt)
        if len(nxt) > beam:
            exact = False
            keep = sorted(nxt, key=lambda m: (nxt[m][0], nxt[m][1]))[:beam]
            nxt = {m: nxt[m] for m in keep}
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            exact = False
            keep = sorted(nxt, key=lambda m: (nxt[m][0], nxt[m][1]))[:1]
            nxt = {m: nxt[m] for m in keep}
            beam = 1
        parents.append(back)
        level = nxt
        if not level:
            break
    if level:  # every op scheduled: one full set remains, strictly better than the incumbent
        (mask, (pk, _, _)), = level.items()
        order = []
        for back in reversed(parents):
            mask, i = back[mask]
            order.append(ops[i].name)
        best_peak, best_order = pk, order[::-1]
    return MinPeak(best_peak, best_order, exact, states, time.perf_counter() - t0)


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
