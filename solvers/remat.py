"""Keep, recompute or offload: which forward values a training step holds for its backward.

The problem (`RematProblem`) is neutral: a timeline of steps (the forward ops, then the
backward ops, in the joint graph's order), the bytes live at each step when the backward
keeps nothing (`base`), and one `Value` per forward op whose outputs the backward may read.
Each value is kept on the device, offloaded to host memory and prefetched before its first
backward reader, or recomputed just before it (as `reordering_to_mimic_autograd_engine`
places recomputed ops). A choice adds bytes over fixed intervals of the timeline:

    step        born ... fwd_last | bwd: ....... need ....... first ..... last
    base        ##########          (always: its forward lifetime)
    keep                  ##########################################
    offload                                 reload ###################
    recompute                                         ##################
    a recomputed consumer needs it at `need`:  #########################

A recomputed value runs where the first of its backward readers and recomputed consumers
needs it, and so, transitively, do the values it reads: recomputing a chain from the loss back
to the first layer brings the whole chain onto the device at the backward's first step. The
programme tracks this exactly (on[v, k], per backward segment, for every value with a
recomputable consumer), so its least peak is a real minimum: it saves the small frontier of a
chain (a residual stream, a matmul's output) and recomputes the cheap ops after it, as torch's
min-cut partitioner does, and may offload the frontier too.

The peak is the maximum over steps of base + the chosen intervals; the added time is
recompute seconds (roofline of the op) plus transfer time that compute cannot hide (each
copy against the compute around it, and all copies together against each pass's compute).
The exact method is a 0-1 programme over these choices (HiGHS by default, through
`solvers.exact.backends`), with the timeline cut into segments where the set of intervals is
constant, so it has one memory row per segment (Checkmate's formulation, arXiv 1910.02653,
restricted to the graph's own order). A greedy (cheapest seconds per byte cut at the peak)
warm-starts it and answers alone when the programme finds nothing in its time limit. Repeated
blocks (values with the same `group`) are first solved tied to one choice per group, a smaller
programme whose answer warm-starts the full one (`Params.repeats`). `min_peak` solves the same
programme with the peak as its objective.

Approximations, stated once: a value needed by recomputations stays until its last possible
need (the latest its consumers could run); an offloaded value's reload is issued at its
prefetch step or at its first need, whichever is earlier; copies in flight do not slow each
other beyond the two totals. The frontend replays the real forward and backward graphs and
tightens the budget when the replayed peak exceeds it, so these only cost optimality, never
the budget.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from planner.errors import Infeasible
from planner.ir import Bytes
from planner.plan import SolverInfo

__all__ = ["Value", "RematProblem", "Params", "Decision", "solve", "evaluate", "peak_step", "min_memory", "min_peak"]

KEEP, OFFLOAD, RECOMPUTE = "keep", "offload", "recompute"


@dataclass
class Value:
    """One forward op whose outputs the backward (or a recomputation) may read."""

    name: str  # the op (fx node name)
    nbytes: Bytes  # its outputs that anything reads
    born: int  # step that computes it
    fwd_last: int  # last forward step reading it (born when none)
    bwd_first: int | None  # first backward step reading it; None when only recomputations need it
    bwd_last: int | None  # last backward step reading it
    inputs: list[str] = field(default_factory=list)  # values it reads (inputs and weights omitted)
    recompute_s: float = 0.0  # seconds to run it again
    transfer_s: float = 0.0  # seconds to copy its bytes one way between device and host
    recomputable: bool = True  # False for random ops (we never replay RNG state) and mutations
    offloadable: bool = True
    group: str | None = None  # values of repeated blocks at the same place share a group (Params.repeats)


@dataclass
class RematProblem:
    name: str
    values: list[Value]
    base: list[Bytes]  # live bytes at each step when the backward keeps nothing
    step_s: list[float]  # compute seconds of each step
    n_forward: int  # steps [0, n_forward) are the forward
    budget: Bytes  # peak bytes allowed

    def __post_init__(self) -> None:
        self.by_name = {v.name: v for v in self.values}
        self.consumers: dict[str, list[str]] = {v.name: [] for v in self.values}
        for v in self.values:
            for u in v.inputs:
                self.consumers[u].append(v.name)


@dataclass
class Params:
    time_limit: float = 30.0  # seconds for the 0-1 programme
    method: str = "milp"  # "milp" (exact on the model, greedy warm start) or "greedy"
    backend: str = "highs"  # "highs", "cbc" or "cpsat" (solvers.exact.backends)
    threads: int = 1
    offload: bool = True  # allow host offload (False: keep or recompute only)
    recompute: bool = True  # allow recomputation (False: keep or offload only)
    repeats: bool = True  # solve with repeated blocks' values tied first, as a warm start (see _exact)


@dataclass
class Decision:
    choice: dict[str, str]  # value -> KEEP, OFFLOAD or RECOMPUTE; values nothing needs are absent
    prefetch: dict[str, int]  # offloaded value -> step at which its reload is issued
    peak: Bytes  # modelled peak
    added_s: float  # modelled added seconds
    solver: SolverInfo


def solve(problem: RematProblem, params: Params | None = None, hints: list[dict[str, str]] | tuple = ()) -> Decision:
    """The cheapest choice whose modelled peak fits `problem.budget`. `hints` (choices found
    elsewhere: torch's min-cut partitions, block checkpointing) warm-start the programme when
    they fit and the greedy does not, or cost less.

    Raises
    ------
    Infeasible : no choice fits; `minimum` is the least modelled peak, `least` its decision
        (`min_peak`) and `op` the step at its peak.
    """
    params = params or Params()
    t0 = time.perf_counter()
    terms = _Terms(problem, params)
    greedy = _greedy(problem, terms)
    fits = [c for c in (greedy, *hints) if terms.peak(c)[0] <= problem.budget and terms.allows(c)]
    best = min(fits, key=terms.cost) if fits else None
    info = SolverInfo("remat-greedy" if best is greedy or best is None else "remat-hint", "heuristic",
                      terms.cost(best or greedy), None, None, 0.0)
    if params.method == "milp":
        left = _left(params, t0)
        found, milp = _exact(problem, terms, left, hint=best)
        if found is not None:
            best, info = found, milp
        elif best is not None:
            info.bound = milp.bound
    if best is None:  # the programme proved no fit, or found none in its time: the least peak may fit
        least = min_peak(problem, _left(params, t0))
        if least.peak <= problem.budget:
            info = SolverInfo(least.solver.name, "heuristic", terms.cost(least.choice), None, None,
                              time.perf_counter() - t0)
            return dataclasses.replace(least, solver=info)
        at = terms.peak(least.choice)[1]
        err = Infeasible(f"{problem.name}: budget {problem.budget:,} B is below the least modelled peak "
                         f"({least.peak:,} B at step {at})", op=str(at), minimum=least.peak)
        err.least = least
        raise err
    info.seconds = time.perf_counter() - t0
    return _decision(terms, best, info)


def _decision(terms: _Terms, choice: dict[str, str], info: SolverInfo) -> Decision:
    """The reload of an offloaded value is issued at its prefetch step, or earlier when a
    recomputed consumer needs it earlier."""
    first = terms.first_need(choice)
    prefetch = {v: min(terms.prefetch[v], first.get(v, terms.prefetch[v])) for v, c in choice.items() if c == OFFLOAD}
    return Decision(choice, prefetch, terms.peak(choice)[0], terms.cost(choice) * 1e-9, info)


def evaluate(problem: RematProblem, choice: dict[str, str], params: Params | None = None) -> tuple[Bytes, float]:
    """(modelled peak bytes, modelled added seconds) of a choice."""
    terms = _Terms(problem, params or Params())
    return terms.peak(choice)[0], terms.cost(choice) * 1e-9


def peak_step(problem: RematProblem, choice: dict[str, str], params: Params | None = None) -> int:
    """The first step of the segment where a choice's modelled peak happens (names the op in errors)."""
    return _Terms(problem, params or Params()).peak(choice)[1]


def min_memory(problem: RematProblem, params: Params | None = None) -> dict[str, str]:
    """The choice with the least modelled peak (see `min_peak`)."""
    return min_peak(problem, params).choice


def min_peak(problem: RematProblem, params: Params | None = None,
             hints: list[dict[str, str]] | tuple = ()) -> Decision:
    """The least modelled peak: the 0-1 programme with the peak as its objective (method
    "milp"), warm-started from the best of the greedy at a zero budget, recomputing
    everything recomputable and the `hints` (choices found elsewhere, e.g. torch's min-cut
    partitions, so the programme starts from them and only improves); with method "greedy",
    that best one alone. `solver.objective` is the peak in bytes."""
    params = params or Params()
    t0 = time.perf_counter()
    terms = _Terms(problem, params)
    zero = RematProblem(problem.name, problem.values, problem.base, problem.step_s, problem.n_forward, 0)
    allowed = [h for h in hints if terms.allows(h)]
    best = min((_greedy(zero, terms), _recompute_all(problem, params), *allowed), key=lambda c: terms.peak(c)[0])
    info = SolverInfo("remat-minpeak-greedy", "heuristic", terms.peak(best)[0], None, None, 0.0)
    if params.method == "milp":  # the time limit counts from the call: the warm starts' time is spent
        left = _left(params, t0)
        found, milp = _exact(problem, terms, left, hint=best, minimise_peak=True)
        if found is not None and terms.peak(found)[0] <= terms.peak(best)[0]:
            best = found
        if found is not None:  # optimal: on the model with bytes rounded up to its unit
            info = SolverInfo(milp.name, milp.status, terms.peak(best)[0], None, None, milp.seconds)
    info.seconds = time.perf_counter() - t0
    return _decision(terms, best, info)


def _recompute_all(problem: RematProblem, params: Params) -> dict[str, str]:
    """Recompute everything recomputable, offload (or keep) the rest."""
    choice: dict[str, str] = {}

    def need(name: str) -> None:
        if name in choice:
            return
        v = problem.by_name[name]
        if v.recomputable and params.recompute:
            choice[name] = RECOMPUTE
            for u in v.inputs:
                need(u)
        else:
            choice[name] = OFFLOAD if v.offloadable and params.offload else KEEP

    for v in problem.values:
        if v.bwd_first is not None:
            need(v.name)
    return choice


class _Terms:
    """Every choice's byte intervals on the timeline, its cost, and the segments between
    interval ends; `peak` and `cost` evaluate a full choice on them.

    A value with a recomputable consumer is *chained*: a recomputed consumer pulls it onto the
    device at the consumer's own (re)start, which may itself be pulled earlier by a recomputed
    consumer of the consumer, so its first backward segment depends on the whole choice. For a
    chained value, on[v, k] = 1 if v is on the device in backward segment k; it rises at v's
    first need and stays up to v's last possible need (`last`). Other values' intervals depend
    on their own choice only (`items`).
    """

    def __init__(self, p: RematProblem, params: Params):
        self.p, self.params = p, params
        end, nf = len(p.base) - 1, p.n_forward
        # run[w]: the earliest step at which w may run when recomputed (its first backward
        # reader, or the earliest run of its consumers); latest[w]: the latest such step
        self.run: dict[str, int] = {}
        latest: dict[str, int] = {}
        for v in reversed(p.values):  # consumers come after their inputs
            runs = [self.run[w] for w in p.consumers[v.name]]
            self.run[v.name] = v.bwd_first if v.bwd_first is not None else min([end] + runs)
            latest[v.name] = v.bwd_first if v.bwd_first is not None else \
                max([nf] + [latest[w] for w in p.consumers[v.name]])
        # start[v]: the first backward step that may need v (itself or a recomputed consumer)
        self.start = {v.name: min([self.run[v.name]] + [self.run[w] for w in p.consumers[v.name]])
                      for v in p.values}
        self.last = {v.name: min(end, max([v.bwd_last if v.bwd_last is not None else -1]
                                          + [latest[w] for w in p.consumers[v.name]])) for v in p.values}
        self.prefetch = {v.name: self._prefetch_step(v) for v in p.values}
        self.chained = {v.name for v in p.values if self.last[v.name] >= nf
                        and any(self.allowed(p.by_name[w], RECOMPUTE) for w in p.consumers[v.name])}
        # (kind, value, nbytes, first step, last step): intervals a choice occupies
        self.items: list[tuple[str, str, int, int, int]] = []
        for v in p.values:
            last = self.last[v.name]
            if last < nf:
                continue  # nothing after the forward needs it
            if v.name in self.chained:  # the backward part is on[v, k]
                if v.fwd_last + 1 < nf:
                    self.items.append((KEEP, v.name, v.nbytes, v.fwd_last + 1, nf - 1))
                continue
            self.items.append((KEEP, v.name, v.nbytes, v.fwd_last + 1, last))
            self.items.append((OFFLOAD, v.name, v.nbytes, self.prefetch[v.name], last))
            if v.bwd_first is not None:
                self.items.append((RECOMPUTE, v.name, v.nbytes, v.bwd_first, last))
        cuts = {0, nf, len(p.base)} | {a for *_, a, _ in self.items} | {b + 1 for *_, b in self.items}
        for v in p.values:
            if v.bwd_first is not None:
                cuts.add(v.bwd_first)
            if v.name in self.chained:
                cuts |= {self.prefetch[v.name], self.last[v.name] + 1}
        self.cuts = sorted(c for c in cuts if c <= len(p.base))
        base = np.asarray(p.base, dtype=np.int64)
        self.seg_base = np.array([base[a:b].max() for a, b in zip(self.cuts, self.cuts[1:])], dtype=np.int64)
        self.seg_of = {c: k for k, c in enumerate(self.cuts)}
        fwd = np.asarray(p.step_s[:nf])
        self.fwd_after = np.concatenate([np.cumsum(fwd[::-1])[::-1], [0.0]])  # compute from step t to forward end
        self.bwd_compute = float(sum(p.step_s[nf:]))
        self.fwd_compute = float(fwd.sum())

    def seg(self, step: int) -> int:
        """The segment holding `step`."""
        return bisect.bisect_right(self.cuts, step) - 1

    def _prefetch_step(self, v: Value) -> int:
        """The latest step whose compute up to the first need hides the copy back; the first
        need itself when no step of the backward does (an early copy would hold bytes and
        still stall)."""
        need = min(self.start[v.name], len(self.p.base) - 1)
        hidden, t = 0.0, need
        while t > self.p.n_forward and hidden < v.transfer_s:
            t -= 1
            hidden += self.p.step_s[t]
        return t if hidden >= v.transfer_s else need

    def ns(self, v: Value, kind: str) -> int:
        """Integer nanoseconds a choice adds to the step on its own (at least 1 when it adds any)."""
        if kind == RECOMPUTE:
            s = v.recompute_s
        elif kind == OFFLOAD:
            hidden_back = sum(self.p.step_s[self.prefetch[v.name]:self.start[v.name]])
            s = max(0.0, v.transfer_s - self.fwd_after[v.born + 1]) + max(0.0, v.transfer_s - hidden_back)
        else:
            return 0
        return max(1, math.ceil(s * 1e9))

    def allowed(self, v: Value, kind: str) -> bool:
        if kind == RECOMPUTE:
            return v.recomputable and self.params.recompute
        if kind == OFFLOAD:
            return v.offloadable and self.params.offload
        return True

    def allows(self, choice: dict[str, str]) -> bool:
        """Every decision of `choice` (a warm start from elsewhere) is one the options allow."""
        return all(self.allowed(self.p.by_name[v], kind) for v, kind in choice.items())

    def cost(self, choice: dict[str, str]) -> int:
        """Added nanoseconds: own costs plus transfer time beyond each pass's compute."""
        own = sum(self.ns(self.p.by_name[n], c) for n, c in choice.items())
        moved = sum(self.p.by_name[n].transfer_s for n, c in choice.items() if c == OFFLOAD)
        excess = max(0.0, moved - self.fwd_compute) + max(0.0, moved - self.bwd_compute)
        return own + math.ceil(excess * 1e9)

    def first_need(self, choice: dict[str, str]) -> dict[str, int]:
        """Chained value -> the first backward step it is on the device under `choice` (kept:
        the backward's start; offloaded: its reload; and the start of any recomputed consumer,
        as `reordering_to_mimic_autograd_engine` places recomputations). Absent: not needed."""
        p, first = self.p, {}
        for v in reversed(p.values):  # consumers first
            c = choice.get(v.name)
            if v.name not in self.chained or c is None:
                continue
            need = [p.n_forward] if c == KEEP else [self.prefetch[v.name]] if c == OFFLOAD else []
            need += [v.bwd_first] if v.bwd_first is not None else []
            for w in p.consumers[v.name]:
                if choice.get(w) == RECOMPUTE:
                    u = p.by_name[w]
                    need += [first[w]] if w in first else [u.bwd_first] if u.bwd_first is not None else []
            if need:
                first[v.name] = min(need)
        return first

    def live(self, choice: dict[str, str]) -> np.ndarray:
        """Modelled bytes in each segment."""
        delta = np.zeros(len(self.cuts), dtype=np.int64)
        for kind, v, nbytes, a, b in self.items:
            if choice.get(v) == kind:
                delta[self.seg_of[a]] += nbytes
                delta[self.seg_of[b + 1]] -= nbytes
        for v, t in self.first_need(choice).items():
            delta[self.seg(t)] += self.p.by_name[v].nbytes
            delta[self.seg(self.last[v]) + 1] -= self.p.by_name[v].nbytes
        return self.seg_base + np.cumsum(delta)[:-1]

    def peak(self, choice: dict[str, str]) -> tuple[Bytes, int]:
        """(peak bytes, first step of the segment where it happens)."""
        live = self.live(choice)
        k = int(np.argmax(live))
        return int(live[k]), self.cuts[k]


def _left(params: Params, t0: float) -> Params:
    """`params` with the time left of a call that began at `t0` (at least half a second)."""
    return dataclasses.replace(params, time_limit=max(0.5, params.time_limit - (time.perf_counter() - t0)))


def _greedy(p: RematProblem, terms: _Terms) -> dict[str, str]:
    """Start from keeping what the backward reads; while the peak is over the budget, apply the
    option with the fewest added nanoseconds per byte it removes at the peak segment (a
    recomputation brings the unneeded inputs it reads along, recomputed too)."""
    choice = {v.name: KEEP for v in p.values if v.bwd_first is not None}
    while True:
        live = terms.live(choice)
        k = int(np.argmax(live))
        if live[k] <= p.budget:
            return choice
        best, best_score = None, math.inf
        for name, c in list(choice.items()):
            if c != KEEP:
                continue
            v = p.by_name[name]
            for option in _options(p, terms, choice, v):
                gain = live[k] - terms.live(option)[k]
                if gain > 0:
                    score = (terms.cost(option) - terms.cost(choice)) / gain
                    if score < best_score:
                        best, best_score = option, score
        if best is None:  # nothing kept helps at the peak
            return choice
        choice = best


def _options(p: RematProblem, terms: _Terms, choice: dict[str, str], v: Value) -> list[dict[str, str]]:
    found = []
    if terms.allowed(v, OFFLOAD):
        found.append({**choice, v.name: OFFLOAD})
    if v.recomputable and terms.params.recompute:
        option, stack = {**choice, v.name: RECOMPUTE}, list(v.inputs)
        while stack:  # inputs nothing holds yet are recomputed too
            u = p.by_name[stack.pop()]
            if u.name in option:
                continue
            if not (u.recomputable and terms.params.recompute):
                break
            option[u.name] = RECOMPUTE
            stack.extend(u.inputs)
        else:
            found.append(option)
    return found


def _exact(p: RematProblem, terms: _Terms, params: Params, hint: dict[str, str] | None,
           minimise_peak: bool = False) -> tuple[dict[str, str] | None, SolverInfo]:
    """The 0-1 programme. With `params.repeats` and repeated blocks (values sharing a `group`),
    first with each group's values tied to one choice (one block solved, applied to all: a
    smaller programme once presolved); its answer warm-starts the untied programme, which gets
    the rest of the time limit and answers no worse."""
    t0 = time.perf_counter()
    tie: dict[str, str] = {}
    if params.repeats:
        first: dict[str, str] = {}
        for v in p.values:
            if v.group is not None:
                tie[v.name] = first.setdefault(v.group, v.name)
        tie = {v: rep for v, rep in tie.items() if v != rep}
    if not tie:
        return _milp(p, terms, params, hint, minimise_peak)
    tied, info = _milp(p, terms, params, None, minimise_peak, tie)
    key = (lambda c: terms.peak(c)[0]) if minimise_peak else terms.cost
    if tied is not None and (hint is None or key(tied) <= key(hint)):
        hint = tied
    left = _left(params, t0)
    found, untied = _milp(p, terms, left, hint, minimise_peak)
    if found is None and tied is not None:
        return tied, info
    untied.seconds = time.perf_counter() - t0
    return found, untied


def _milp(p: RematProblem, terms: _Terms, params: Params, hint: dict[str, str] | None,
          minimise_peak: bool = False, tie: dict[str, str] | None = None) -> tuple[dict[str, str] | None, SolverInfo]:
    """The 0-1 programme on the terms: the least added time within the budget, or with
    `minimise_peak` the least modelled peak. Returns (choice or None, solver info); the info's
    status is "infeasible" when the programme proves no choice fits."""
    from planner.solvers.exact import backends

    m = backends.Model()
    unit = max(1, 2 ** math.ceil(math.log2(max(1, int(terms.seg_base.max()) + sum(v.nbytes for v in p.values))
                                           / 2**20)))  # byte unit: keeps coefficients below ~2^20
    # x[v, c] = 1 if value v takes choice c
    x: dict[tuple[str, str], int] = {}
    for v in p.values:
        for c in (KEEP, OFFLOAD, RECOMPUTE):
            if terms.allowed(v, c) and (c != KEEP or v.bwd_first is not None or p.consumers[v.name]):
                x[v.name, c] = m.var(f"{c}_{v.name}", cost=0 if minimise_peak else terms.ns(v, c))
    # A value the backward reads takes exactly one choice; any other at most one.
    for v in p.values:
        mine = {x[v.name, c]: 1 for c in (KEEP, OFFLOAD, RECOMPUTE) if (v.name, c) in x}
        if v.bwd_first is not None:
            m.row(f"one_{v.name}", mine, lo=1, hi=1)
        elif mine:
            m.row(f"atmost_{v.name}", mine, hi=1)
    # A repeated block's value takes the choice of the same value in the first block (`tie`).
    for v, rep in (tie or {}).items():
        mine = [c for c in (KEEP, OFFLOAD, RECOMPUTE) if (v, c) in x]
        if mine == [c for c in (KEEP, OFFLOAD, RECOMPUTE) if (rep, c) in x]:
            for c in mine:
                m.row(f"tie_{v}_{c}", {x[v, c]: 1, x[rep, c]: -1}, lo=0, hi=0)
    # A recomputed value's inputs are held (kept, offloaded or recomputed) in the backward.
    for v in p.values:
        if (v.name, RECOMPUTE) not in x:
            continue
        for u in v.inputs:
            held = {x[u, c]: 1 for c in (KEEP, OFFLOAD, RECOMPUTE) if (u, c) in x}
            m.row(f"input_{v.name}_{u}", {**held, x[v.name, RECOMPUTE]: -1}, lo=0)
    # on[v, k] = 1 if chained value v is on the device in backward segment k (see _Terms).
    nf_seg = terms.seg(p.n_forward)
    on: dict[str, dict[int, int]] = {}
    for name in terms.chained:
        v = p.by_name[name]
        segs = range(nf_seg, terms.seg(terms.last[name]) + 1)
        need = (terms.seg(v.bwd_first), terms.seg(v.bwd_last)) if v.bwd_first is not None else (1, 0)
        on[name] = {k: m.var(f"on_{name}_{k}", lb=int(need[0] <= k <= need[1])) for k in segs}
        # once on, v stays until its last possible need
        for k in segs[1:]:
            m.row(f"stay_{name}_{k}", {on[name][k]: 1, on[name][k - 1]: -1}, lo=0)
        # kept: on from the backward's start; offloaded: from its reload
        if (name, KEEP) in x:
            m.row(f"kept_{name}", {on[name][nf_seg]: 1, x[name, KEEP]: -1}, lo=0)
        if (name, OFFLOAD) in x:
            k = min(max(terms.seg(terms.prefetch[name]), nf_seg), segs[-1])
            m.row(f"reload_{name}", {on[name][k]: 1, x[name, OFFLOAD]: -1}, lo=0)
    # A recomputed consumer w needs v on the device when it starts: on[v, k] >= on[w, k] + rec[w] - 1.
    for name in terms.chained:
        for w in p.consumers[name]:
            if (w, RECOMPUTE) not in x:
                continue
            if w in on:
                for k, i in on[w].items():
                    if k in on[name]:
                        m.row(f"chain_{name}_{w}_{k}", {on[name][k]: 1, i: -1, x[w, RECOMPUTE]: -1}, lo=-1)
            elif p.by_name[w].bwd_first is not None and terms.seg(p.by_name[w].bwd_first) in on[name]:
                k = terms.seg(p.by_name[w].bwd_first)
                m.row(f"chain_{name}_{w}_{k}", {on[name][k]: 1, x[w, RECOMPUTE]: -1}, lo=0)
    # Transfers beyond each pass's compute: excess >= sum of offloaded copy seconds - compute.
    offl = [(x[v.name, OFFLOAD], v.transfer_s) for v in p.values if (v.name, OFFLOAD) in x]
    for label, compute in (("fwd", terms.fwd_compute), ("bwd", terms.bwd_compute)):
        if offl and sum(s for _, s in offl) > compute and not minimise_peak:
            e = m.var(f"excess_{label}", ub=10**15, cost=1)
            m.row(f"excess_{label}", {e: 1, **{i: -math.ceil(s * 1e9) for i, s in offl}},
                  lo=-math.floor(compute * 1e9))
    # Peak rule: in each segment, base + the active intervals + the chained values on fit the
    # budget (or the peak variable). run_k: running sum of the intervals.
    starts: dict[int, dict[int, int]] = {}
    for kind, v, nbytes, a, b in terms.items:
        if (v, kind) not in x:
            continue
        i, coef = x[v, kind], -(-nbytes // unit)
        for seg, sign in ((terms.seg_of[a], 1), (terms.seg_of[b + 1], -1)):
            starts.setdefault(seg, {})
            starts[seg][i] = starts[seg].get(i, 0) + sign * coef
    total = sum(-(-v.nbytes // unit) for v in p.values) + int(terms.seg_base.max()) // unit + 1
    peak = m.var("peak", ub=total, cost=1) if minimise_peak else None
    prev = None
    for k in range(len(terms.seg_base)):
        base = int(terms.seg_base[k])
        room = (p.budget - base) // unit
        if room < 0 and not minimise_peak:
            return None, SolverInfo("remat-milp", "infeasible", None, None, None, 0.0)
        run = m.var(f"run_{k}", ub=total, lb=0)
        row = {run: 1, **({prev: -1} if prev is not None else {})}
        for i, c in starts.get(k, {}).items():
            row[i] = row.get(i, 0) - c
        m.row(f"run_{k}", row, lo=0, hi=0)
        prev = run
        cap = {run: 1, **{on[v][k]: -(-p.by_name[v].nbytes // unit) for v in on if k in on[v]}}
        if minimise_peak:
            m.row(f"peak_{k}", {**cap, peak: -1}, hi=(-base) // unit)  # peak >= base + on + intervals
        else:
            m.row(f"fit_{k}", cap, hi=room)
    warm = _hint(m, terms, x, on, hint) if hint is not None else None
    r = backends.solve(m, params.backend, params.time_limit, params.threads, warm)
    name = f"remat-{'minpeak' if minimise_peak else 'milp'}-{params.backend}{'-tied' if tie else ''}"
    if r.x is None:
        status = "infeasible" if r.status == backends.INFEASIBLE else "heuristic"
        return None, SolverInfo(name, status, None, r.bound, None, r.seconds)
    choice = {v: c for (v, c), i in x.items() if r.x[i]}
    obj = r.objective if minimise_peak else terms.cost(choice)
    gap = 0.0 if r.status == backends.OPTIMAL else (obj - r.bound) / obj if obj > 0 else 0.0
    return choice, SolverInfo(name, "optimal" if r.status == backends.OPTIMAL else "feasible",
                              obj, r.bound, max(0.0, gap), r.seconds)


def _hint(m, terms: _Terms, x: dict[tuple[str, str], int], on: dict[str, dict[int, int]],
          choice: dict[str, str]) -> list[int] | None:
    """A choice as a full assignment, or None when it breaks a row (byte rounding, budget)."""
    vals = [0] * len(m.lb)
    for (v, c), i in x.items():
        vals[i] = int(choice.get(v) == c)
    first = terms.first_need(choice)
    for v, segs in on.items():
        for k, i in segs.items():
            vals[i] = int(v in first and k >= terms.seg(first[v]))
    # running sums, excesses and the peak: set from the other variables of their rows
    peak = 0
    for idx, val, lo, hi, name in zip(m.row_idx, m.row_val, m.row_lo, m.row_hi, m.row_names):
        if name.startswith(("excess_", "run_")):
            rest = sum(c * vals[i] for i, c in zip(idx[1:], val[1:]))
            vals[idx[0]] = max(0, math.ceil(lo - rest)) if name.startswith("excess_") else -rest
        elif name.startswith("peak_"):
            peak = max(peak, sum(c * vals[i] for i, c in zip(idx, val) if m.names[i] != "peak") - hi)
    if "peak" in m.names:
        vals[m.names.index("peak")] = int(math.ceil(peak))
    return None if m.violated(vals) else vals
