"""Divide-and-conquer planning for large irregular graphs (NAS networks, thousands of ops).

The schedule is fixed first (the hierarchical min-peak order of `planner.schedule`), then
cut into segments of at most `segment_ops` ops. Each segment becomes a small problem that
the exact solver (`solvers.exact`) solves given what crosses its two boundaries, free to
reorder the segment's ops; the segment plans are stitched into one, and offsets are
re-placed globally.

What crosses a boundary comes from a **guide** plan (the better baseline on the order,
later the best stitched plan): a live tensor the guide keeps resident across the cut is
**carried** (it stays in fast memory), any other live tensor is in slow memory there. A
segment problem therefore has two extra ops:

    B ──> o_lo ... o_hi-1 ──> E        B "produces" the carried-in activations (resident, no
                                       slow copy yet) and reads the carried-in tensors that
                                       have one; E reads the carried-out tensors, so they are
                                       resident at the end. A live tensor not carried out
                                       is an output of the segment: it must be stored.

Every segment problem holds the guide's own segment as a solution, so segments only
improve on it (up to offsets). A segment whose tensors fit without spilling is solved on
the spot (zero traffic is optimal); the others share the pass's time: the exact solver
first plans the segment in its order (the fixed-order model, often proven in well under
a second), then lets its ops move up to `radius` places inside their ASAP/ALAP windows
(`exact.improve`, warm-started from that plan) with B pinned first and E last, so no op
crosses a cut and what crosses it stays as decided. A fixed order is what kept dnc far
from the optimum on NAS cells, whose branches the min-peak order interleaves: PNASNet-5
at M_H has a 40-op segment that moves 1.29 MB in the min-peak order and 0.38-0.42 MB
reordered.

**Offsets are decided with the segments.** The exact model's memory is one capacity row
per step; offsets are packed after it. Segments are therefore placed in turn, each to
continue the plan before it: the tensors it carries in keep the offsets the previous
segment gave them (`exact.Params.pinned`), so a segment's solve packs its residencies
around them, cuts off a pattern that does not fit and solves again, and the stitched
plan is placed by construction. (Placing the stitched plan afterwards, as dnc did, left
it 15-30% over the capacity on a thousand-op DAG once placed.) With several `workers`
the segments that spill are first solved in parallel without pins, then each placed
around its pins or solved again. A segment that finds nothing around its pins in its
time is *drained*: what it carries in is spilled at its start and its baseline runs
from an empty memory.

The first pass carries every live tensor across its cuts where they fit; each further
pass cuts the best plan's own order (segments reorder) shifted by a fraction of a
segment and carries what that plan keeps resident there, until a pass after the first
does not improve it. Segments solved in turn take what a finished one leaves of its
share. Each pass gets half the time left, the last one all of it; with `lns` the passes
share half of the time and the large-neighbourhood search (`solvers.lns`) improves the
best plan with the rest: it re-solves windows of the plan whose cuts fall between dnc's,
so a store in one segment and its reload in the next are decided together. Stitching
drops B, E, the loads of carried tensors and the frees at the cut. The best COSMA
baseline remains the fallback: the plan never has more traffic than it.

With `lower_bound` (bytes of non-compulsory traffic no plan beats, from a global bound)
the solve stops as soon as the best plan meets it and reports it optimal with that bound;
otherwise the plan is "feasible" with that bound and its gap. `progress` hears of every
better plan: {"traffic", "bound", "elapsed"}.

A graph of at most `segment_ops` ops is one segment: `solvers.exact` on the whole problem.
"""
from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

from planner.bounds import LowerBound, check_budget, known, min_peak
from planner.ir import Graph, Op, Tensor
from planner.plan import Plan, SolverInfo, Step
from planner.problem import Problem, align_up
from planner.solvers import baselines
from planner.solvers import exact as exact_solver
from planner.solvers.exact.model import windows

__all__ = ["Params", "solve"]

BEGIN, END = "__dnc_begin", "__dnc_end"  # names of the boundary ops of a segment problem
MIN_SEGMENT_SECONDS = 0.25  # below this, a segment's exact solve would not get past its baselines


@dataclass
class Params:
    time_limit: float | None = 60.0  # seconds for the whole solve, schedule and baselines included
    schedule: list[str] | None = None  # the op order (from the API); the min-peak order when None
    segment_ops: int = 40  # most graph ops per segment problem
    passes: int = 4  # most boundary passes; pass k shifts the cuts by k / passes of a segment
    workers: int = 1  # processes for the segments of a pass (1: in turn, each placed around its pins)
    segment_time_limit: float = 10.0  # seconds per segment's exact solve, at most
    backend: str = "highs"  # the exact solver's back end
    radius: int = 40  # most places an op may move from the guide's order in a segment (0: fixed order)
    lns: bool = True  # after the passes, the large-neighbourhood search (solvers.lns) for the time left
    lower_bound: LowerBound = None  # no plan moves fewer non-compulsory bytes: stop on reaching it
    progress: Callable[[dict], None] | None = None  # called with {"traffic", "bound", "elapsed"} as the plan improves


def solve(problem: Problem, params: Params | None = None) -> Plan:
    """A plan by divide and conquer; never more traffic than the best COSMA baseline.

    Parameters
    ----------
    problem : graph, target (capacity = budget), fixed_order (recompute is not used).
    params : segment size, passes, workers, time limits.

    Returns
    -------
    Plan with status "optimal" when it moves no non-compulsory byte, meets
    `params.lower_bound`, or the graph is one segment and the exact solver proved it;
    else "feasible" with bound `lower_bound` (0 without one): no global bound is computed
    here. `extra` holds the baselines and the log of passes and search sweeps.

    Raises
    ------
    Infeasible : the budget is below M_R.

    Examples
    --------
    >>> from tests.graphs import chain
    >>> from planner.ir import Target
    >>> p = solve(Problem(chain([4, 8, 2, 16]), Target("t", 20, alignment=1, element_bytes=1)))
    >>> p.solver.name, p.solver.status, p.solver.objective
    ('dnc', 'optimal', 0)
    """
    params = params or Params()
    t0 = time.perf_counter()
    deadline = t0 + (math.inf if params.time_limit is None else params.time_limit)
    check_budget(problem)
    g = problem.graph
    if problem.fixed_order:
        order = [o.name for o in g.ops]
    else:
        order = params.schedule or min_peak(problem, time_limit=_share(deadline, 0.3)).order
    if len(order) <= params.segment_ops:  # one segment: the exact solver on the whole problem
        p = exact_solver.solve(problem, exact_solver.Params(time_limit=_left(deadline), schedule=order,
                                                            backend=params.backend))
        bound = max(p.solver.bound, known(params.lower_bound))
        p.solver = SolverInfo.proven("dnc", p.solver.objective, bound, time.perf_counter() - t0)
        p.extra = {**p.extra, "segments": 1}
        _report(params, p.solver.objective, t0)
        return p
    # the four baselines: the fallback, and the guide (the better one on `order`)
    runs = [(f"{name}-{rep}", baselines.Params(replacement=rep, schedule=sched))
            for name, sched in (("file", None), ("minpeak", order)) for rep in ("belady", "greedy")]
    base = {}
    portable = problem.portable() if params.workers > 1 else problem
    for (name, _), pl in zip(runs, _map(params.workers, _baseline, [(portable, bp) for _, bp in runs])):
        base[name] = (_cost(problem, pl), pl)
    best_name = min(base, key=lambda k: base[k][0])
    best_cost, best = base[best_name]
    guide_cost, guide = min((base["minpeak-belady"], base["minpeak-greedy"]), key=lambda c: c[0])
    _report(params, best_cost, t0)
    log: list[str] = []
    source = best_name
    made = [pl for _, pl in base.values()]  # every placed plan: the search tries their spans too
    # the passes get half the time when the search follows them (they usually need less)
    passes_end = deadline if not params.lns else time.perf_counter() + (deadline - time.perf_counter()) / 2
    if best_cost > known(params.lower_bound):
        for k in range(params.passes):
            if time.perf_counter() > passes_end:
                log.append(f"pass {k}: skipped, time limit")
                break
            shift = k * params.segment_ops // params.passes
            now = time.perf_counter()
            until = now + (passes_end - now) * (1.0 if k == params.passes - 1 else 0.5)  # half the time left
            guide_order = [s.op for s in guide.steps if s.kind == "compute"]  # segments reorder: the guide's own
            steps, note = _pass(problem, guide_order, guide.steps, shift, params, until)
            cost, pl = math.inf, None
            if steps is not None:
                pl = Plan.build(problem, steps, SolverInfo("dnc", "feasible"))
                cost = _cost(problem, pl)
                made.append(pl)
                note += f", non-compulsory {cost}"
            log.append(f"pass {k}: {note}")
            if cost < best_cost:
                best_cost, best, source = cost, pl, f"pass {k}"
                _report(params, best_cost, t0)
            if cost < guide_cost:
                guide_cost, guide = cost, pl
            elif k >= 1 or best_cost <= known(params.lower_bound):
                break  # a pass on the best plan's boundaries that does not improve it: they settled
    if params.lns and best_cost > known(params.lower_bound) and time.perf_counter() < deadline:
        from planner.solvers import lns  # the search re-solves windows as this module's segments

        found = lns.solve(problem, lns.Params(
            time_limit=None if deadline == math.inf else deadline - time.perf_counter(), start=best.steps,
            others=tuple(pl.steps for pl in made if pl is not best),
            window_ops=params.segment_ops, radius=params.radius, backend=params.backend,
            window_time_limit=min(params.segment_time_limit, lns.Params.window_time_limit),
            lower_bound=params.lower_bound,
            progress=None if params.progress is None else lambda e: _report(params, e["traffic"], t0)))
        log += found.extra["log"]
        if found.solver.objective < best_cost:
            best_cost, best, source = found.solver.objective, found, "lns"
    info = SolverInfo.proven("dnc", best_cost, known(params.lower_bound), time.perf_counter() - t0)
    plan = Plan.build(problem, best.steps, info)
    plan.extra = {"found_by": source, "baselines": {k: v[0] for k, v in base.items()}, "log": log}
    return plan


def _report(params: Params, traffic: float, t0: float) -> None:
    """Tells `params.progress` (when set) the traffic of the best plan so far."""
    if params.progress is not None:
        params.progress({"traffic": traffic, "bound": known(params.lower_bound), "elapsed": time.perf_counter() - t0})


def _map(workers: int, fn, items: list) -> list:
    """fn over items, in order: in `workers` processes, or here when workers is 1."""
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
    return [fn(x) for x in items]


def _baseline(args: tuple[Problem, baselines.Params]) -> Plan:
    return baselines.solve(*args)


def _left(deadline: float) -> float | None:
    return None if deadline == math.inf else max(1.0, deadline - time.perf_counter())


def _share(deadline: float, fraction: float) -> float | None:
    return None if deadline == math.inf else max(1.0, fraction * (deadline - time.perf_counter()))


def _cost(problem: Problem, plan: Plan) -> int:
    """Non-compulsory bytes of a plan's steps (the API's simulator replay confirms it)."""
    return sum(problem.sizes[s.tensor] for s in plan.steps if s.kind in ("load", "store")) - problem.compulsory_bytes()


@dataclass
class _Segment:
    """One segment problem and how to map its plan back."""

    problem: Problem
    carried_in: list[str]  # resident when the segment starts
    carried_out: list[str]  # resident when it ends
    backend: str
    radius: int = 0  # most positions an op may move from the segment's order
    time_limit: float = math.inf  # seconds for its exact solve
    stop: float = math.inf  # wall clock (time.time) past which only its baselines run
    start: list[Step] | None = None  # a plan of it to start from (an LNS window's incumbent)
    pinned: dict[str, int] = dataclasses.field(default_factory=dict)  # carried in: offsets the plan before gave them
    pinned_end: dict[str, int] = dataclasses.field(default_factory=dict)  # carried out: offsets the plan after expects


def _pass(problem: Problem, order: list[str], guide: list[Step], shift: int, params: Params,
          until: float) -> tuple[list[Step] | None, str]:
    """One pass, to end by `until`: cut, solve the segments, stitch. Segments are placed
    in turn, each to continue the plan before it: the tensors it carries in keep the
    offsets the previous segment gave them (`exact.Params.pinned`), so the stitched plan
    is placed by construction, and where a segment's residencies do not fit around them
    its own solve cuts that pattern off and solves again. (Placing the stitched plan as a
    whole found it 15-30% over the capacity at a thousand ops, and lowering the budgets
    of the segments it overflowed took the rest of the pass.) With several workers the
    segments that spill are first solved in parallel, unpinned, on half the time; each
    such plan is then placed around its pins, or the segment solved again pinned. Each
    segment solved in turn takes an even share of what is left, so a fast segment's
    leftover goes to the rest; one that finds no plan around its pins in its share is
    drained (`_drained`). Returns the steps (None if their offsets are wrong, which the
    pins rule out) and a note for the log."""
    live = _live_sets(problem, order)
    cuts = _cuts([sum(problem.sizes[t] for t in ts) for ts in live], shift, params.segment_ops)
    kept = _kept_at(problem, order, guide, cuts)
    carried = [_carry(problem, live[c], kept[j], all_live=shift == 0) for j, c in enumerate(cuts)]
    n = len(cuts) - 1
    segs = [_segment(problem, order, cuts[i], cuts[i + 1], carried[i], carried[i + 1], problem.capacity,
                     params.backend, params.radius) for i in range(n)]
    first = [_no_spill(seg) for seg in segs]  # fits without spilling: solved (optimally) here
    hard = [i for i in range(n) if first[i] is None]
    stop = time.time() + 0.95 * max(0.0, until - time.perf_counter())  # stitching takes the rest
    if params.workers > 1 and len(hard) > 1:  # in parallel, unpinned, on half the time
        half = 0.5 * (stop - time.time())
        share = half / math.ceil(len(hard) / params.workers)
        for i in hard:
            segs[i].time_limit, segs[i].stop = min(params.segment_time_limit, share), time.time() + half
        for i, p in zip(hard, _map(params.workers, _solve_segment, [segs[i] for i in hard])):
            first[i] = p
    plans: list[list[Step]] = []
    at: dict[str, int] = {}  # offsets of what the previous segment carries out
    calls, drained, todo = len(hard) if params.workers > 1 and len(hard) > 1 else 0, 0, len(hard)
    for i, seg in enumerate(segs):
        seg.pinned = {t: at[t] for t in seg.carried_in}
        sub = None if first[i] is None else _pinned(seg, first[i])
        if sub is None:
            seg.time_limit = min(params.segment_time_limit, max(stop - time.time(), 0.0) / max(1, todo))
            seg.stop = stop
            sub, calls = _solve_segment(seg), calls + 1
            if sub is None:
                sub, drained = _drained(problem, order, cuts[i], cuts[i + 1], seg), drained + 1
        todo -= i in hard
        at = _resident_offsets(sub[:max(k for k, s in enumerate(sub) if s.kind == "compute") + 1])  # at its E
        plans.append(sub)
    steps, _ = _stitch(problem, segs, plans, offsets=True)
    note = f"{n} segments ({calls} solver calls, {drained} drained), cuts shifted by {shift}"
    error = baselines.offset_error(problem, steps)
    if error is not None:  # not expected: the pins make the offsets agree
        return None, note + f": stitched offsets invalid ({error})"
    return steps, note


def _drained(problem: Problem, order: list[str], lo: int, hi: int, seg: _Segment) -> list[Step]:
    """A plan of segment order[lo:hi] that places whatever the pins: what it carries in is
    stored (where slow memory lacks it; `_stitch` drops the other stores) and freed at its
    start, then the better baseline of the segment that carries nothing in runs from an
    empty memory. For a segment whose solve found nothing around its pins in time."""
    empty = _segment(problem, order, lo, hi, [], seg.carried_out, problem.capacity, seg.backend)
    runs = [baselines.solve(empty.problem, baselines.Params(replacement=r)) for r in ("belady", "greedy")]
    body = min(runs, key=lambda p: _cost(empty.problem, p)).steps
    kinds = problem.graph.tensors
    spill = [Step("store", tensor=t) for t in seg.carried_in if kinds[t].kind not in ("input", "weight")]
    return [Step("compute", op=BEGIN, offsets={})] + spill + [Step("free", tensor=t) for t in seg.carried_in] + body


def _resident_offsets(steps: list[Step]) -> dict[str, int]:
    """The offset of every tensor resident after `steps`."""
    at: dict[str, int] = {}
    for s in steps:
        if s.kind == "load":
            at[s.tensor] = s.offset  # type: ignore[index,assignment]
        elif s.kind == "compute":
            at.update(s.offsets or {})
        elif s.kind == "free":
            at.pop(s.tensor, None)  # type: ignore[arg-type]
    return at


def _cuts(weight: list[int], shift: int, size: int) -> list[int]:
    """Cut positions (0 and n included): about every `size` ops from `shift`, each moved,
    within a quarter segment, to where the fewest bytes are live across it."""
    n = len(weight) - 1
    cuts = [0]
    target = shift if shift > 0 else size
    while target < n:
        lo, hi = max(cuts[-1] + 1, target - size // 4), min(n - 1, target + size // 4)
        if lo > hi:
            break
        c = min(range(lo, hi + 1), key=lambda p: (weight[p], abs(p - target)))
        cuts.append(c)
        target = c + size
    if n - cuts[-1] < size // 4 and len(cuts) > 1:
        cuts.pop()  # no tiny last segment
    return cuts + [n]


def _live_sets(problem: Problem, order: list[str]) -> list[list[str]]:
    """Per cut position c (before order[c]; 0..n): the tensors used both before and after it."""
    pos = {o: i for i, o in enumerate(order)}
    out: list[list[str]] = [[] for _ in range(len(order) + 1)]
    for t in problem.sizes:
        tt = problem.graph.tensors[t]
        uses = [pos[u] for u in tt.consumers] + ([pos[tt.producer]] if tt.producer else [])
        if uses:
            for c in range(min(uses) + 1, max(uses) + 1):
                out[c].append(t)
    return out


def _carry(problem: Problem, live: list[str], guide_kept: set[str], all_live: bool) -> list[str]:
    """What stays resident across one cut: with `all_live`, every live tensor when they fit
    together (the segments decide what to spill); otherwise, or when they do not fit,
    what the guide keeps there (so the guide's segment is a solution)."""
    a = problem.target.alignment
    if all_live and sum(align_up(problem.sizes[t], a) for t in live) <= problem.capacity:
        return list(live)
    return [t for t in live if t in guide_kept]


def _kept_at(problem: Problem, order: list[str], guide: list[Step], cuts: list[int]) -> list[set[str]]:
    """Per cut c: the tensors the guide has resident both right after order[c - 1]
    computes (its outputs included) and right before order[c] computes; empty at the
    graph's two ends. One sweep over the guide's steps."""
    want = {order[c]: j for j, c in enumerate(cuts) if 0 < c < len(order)}
    last = {order[c - 1] for c in cuts if 0 < c < len(order)}
    kept: list[set[str]] = [set() for _ in cuts]
    resident: set[str] = set()
    after: dict[str, set[str]] = {}  # op before a cut -> resident right after it
    prev = None
    for s in guide:
        if s.kind == "load":
            resident.add(s.tensor)  # type: ignore[arg-type]
        elif s.kind == "free":
            resident.discard(s.tensor)  # type: ignore[arg-type]
        elif s.kind == "compute":
            if s.op in want and prev is not None:
                kept[want[s.op]] = after.get(prev, set()) & resident
            resident |= {t for t in problem.graph.op(s.op).outputs if t in problem.sizes}  # type: ignore[arg-type]
            if s.op in last:
                after[s.op] = set(resident)  # type: ignore[index]
            prev = s.op
    return kept


def _segment(problem: Problem, order: list[str], lo: int, hi: int, carried_in: list[str], carried_out: list[str],
             capacity: int, backend: str, radius: int = 0, has_copy: frozenset[str] = frozenset(),
             need_copy: frozenset[str] = frozenset()) -> _Segment:
    """The problem of ops order[lo:hi] between two boundaries (see the module docstring).
    Cutting a whole plan's order, each segment stores what it spills; a window of a plan
    (solvers.lns) knows more from the plan around it: `has_copy`, the carried-in
    activations slow memory already holds (B reads them: spilling them costs no store),
    and `need_copy`, the carried-out ones the rest of the plan reloads without storing
    them first (the window must store them)."""
    g = problem.graph
    ops = [g.op(o) for o in order[lo:hi]]
    inside = {o.name for o in ops}
    pos = {o: i for i, o in enumerate(order)}
    carried_in_set, carried_out_set = set(carried_in), set(carried_out)

    def used_after(t: str) -> bool:
        return any(pos[c] >= hi for c in g.tensors[t].consumers)

    def has_slow_copy(t: str) -> bool:  # at the start of the segment
        kind = g.tensors[t].kind
        return kind in ("input", "weight", "output") or t not in carried_in_set or t in has_copy

    begin_reads = [t for t in carried_in if has_slow_copy(t)]
    begin_writes = [t for t in carried_in if not has_slow_copy(t)]
    names = set(begin_reads + begin_writes + list(carried_out))
    for o in ops:
        names |= set(o.inputs) | set(o.outputs)
    tensors: dict[str, Tensor] = {}
    for t in names:
        tt = g.tensors[t]
        if tt.producer in inside or t in begin_writes:
            must_store = tt.kind == "output" or (used_after(t) and (t not in carried_out_set or t in need_copy))
            kind = "output" if must_store else "activation"
            producer = tt.producer if tt.producer in inside else BEGIN
        else:
            kind, producer = ("weight" if tt.kind == "weight" else "input"), None
        consumers = [c for c in tt.consumers if c in inside]
        if t in begin_reads:
            consumers = [BEGIN] + consumers
        if t in carried_out_set:
            consumers.append(END)
        tensors[t] = dataclasses.replace(tt, kind=kind, producer=producer, consumers=consumers)
    sub_ops = [Op(o.name, o.type, list(o.inputs), list(o.outputs), o.flops) for o in ops]
    if begin_reads or begin_writes:
        sub_ops.insert(0, Op(BEGIN, "Boundary", begin_reads, begin_writes))
    if carried_out:
        sub_ops.append(Op(END, "Boundary", list(carried_out), []))
    inputs = [t for t, v in tensors.items() if v.kind == "input"]
    outputs = [t for t, v in tensors.items() if v.kind == "output"]
    sub = Graph(f"{g.name}[{lo}:{hi}]", tensors, sub_ops, inputs, outputs)
    target = problem.target.with_capacity(capacity)
    return _Segment(Problem(sub, target, fixed_order=True), list(carried_in), list(carried_out), backend, radius)


def _no_spill(seg: _Segment) -> list[Step] | None:
    """The segment's steps when it runs without spilling (every tensor resident from its
    first use to its last in the segment, loads only of what slow memory holds, stores
    only of its outputs): its non-compulsory traffic is zero, so this is optimal. None
    when those residencies exceed the segment's capacity at some step (offsets are
    placed later, for the stitched plan)."""
    pr = seg.problem
    g, size, a = pr.graph, pr.sizes, pr.target.alignment
    last = {t: i for i, o in enumerate(g.ops) for t in pr.tensors_of(o)}
    resident: set[str] = set()
    used, steps = 0, []
    for i, o in enumerate(g.ops):
        for t in o.inputs:
            if t in size and t not in resident:
                steps.append(Step("load", tensor=t))
                resident.add(t)
                used += align_up(size[t], a)
        steps.append(Step("compute", op=o.name))
        for t in o.outputs:
            if t in size:
                resident.add(t)
                used += align_up(size[t], a)
        if used > pr.capacity:
            return None
        steps += [Step("store", tensor=t) for t in o.outputs if t in size and g.tensors[t].kind == "output"]
        for t in pr.tensors_of(o):
            if last[t] == i and t in resident:
                steps.append(Step("free", tensor=t))
                resident.discard(t)
                used -= align_up(size[t], a)
    return steps


def _solve_segment(seg: _Segment) -> list[Step]:
    """The exact solver on one segment for its share of the pass: first in the segment's
    order (the fixed-order model, fast and often proven, with the whole share: a third of
    it left the first plan of a 300-op layered DAG 5% worse than a fixed-order pass),
    then, with a radius, in the neighbourhood where each op may move up to `radius`
    places (`_neighbourhood`), warm-started from that plan, for what it leaves. Once the
    pass's time is spent, the better of the segment's two baselines instead."""
    t0 = time.time()
    limit = min(seg.time_limit, seg.stop - t0)
    pins = {"pinned": seg.pinned, "pinned_end": seg.pinned_end}
    if limit < MIN_SEGMENT_SECONDS:
        if seg.start is not None:
            return seg.start
        runs = [baselines.solve(seg.problem, baselines.Params(replacement=r)) for r in ("belady", "greedy")]
        return _pinned(seg, min(runs, key=lambda p: _cost(seg.problem, p)).steps)
    start = None if seg.start is None else Plan.build(seg.problem, seg.start, SolverInfo("lns", "feasible"))
    p = exact_solver.solve(seg.problem, exact_solver.Params(  # the whole share: what it leaves, reordering gets
        time_limit=None if limit == math.inf else limit, backend=seg.backend, order_bound=False, joint=False,
        alloc_time_limit=min(5.0, max(0.1, limit / 4)), start=start, **pins))
    steps = _pinned(seg, p.steps)
    left = limit - (time.time() - t0)
    if steps is not None and seg.radius > 0 and p.solver.objective > 0 and left >= MIN_SEGMENT_SECONDS:
        free = dataclasses.replace(seg.problem, fixed_order=False)
        order = [s.op for s in steps if s.kind == "compute"]
        p = exact_solver.improve(free, Plan.build(free, steps, p.solver), _neighbourhood(free, order, seg.radius),
                                 exact_solver.Params(time_limit=None if left == math.inf else left, backend=seg.backend,
                                                     alloc_time_limit=min(5.0, max(0.1, left / 4)), **pins))
        steps = p.steps
    return steps


def _pinned(seg: _Segment, steps: list[Step]) -> list[Step] | None:
    """`steps` when they place every residency and keep the segment's pins, else placed
    again to keep them (`baselines.pinned`); None when they cannot be."""
    return baselines.pinned(seg.problem, steps, seg.pinned, seg.pinned_end, 1.0)


def _neighbourhood(problem: Problem, order: list[str], radius: int) -> dict[str, tuple[int, int]]:
    """Per op of a segment problem, the steps it may run at when the segment reorders:
    within `radius` of its place in `order` (which keeps the joint model small enough to
    solve in a share of a pass) and inside its ASAP/ALAP window; B stays first and E last,
    since what crosses the cuts is resident exactly there."""
    asap_alap = windows(problem, True)
    first = 1 if order[0] == BEGIN else 0
    last = len(order) - (2 if order[-1] == END else 1)
    out = {}
    for i, o in enumerate(order):
        if o in (BEGIN, END):
            out[o] = (i, i)
        else:
            lo, hi = asap_alap[o]
            out[o] = (max(lo, i - radius, first), min(hi, i + radius, last))
    return out


def _stitch(problem: Problem, segs: list[_Segment], plans: list[list[Step]], resident: set[str] | None = None,
            stored: set[str] | None = None, offsets: bool = False) -> tuple[list[Step], list[int]]:
    """One step list from the segment plans (offsets dropped unless `offsets`): the boundary ops,
    loads of tensors already resident, stores of tensors slow memory already holds and
    the frees after E are dropped; what a segment leaves resident beyond its carried-out
    tensors is freed at its end. `resident` and `stored` say what fast and slow memory
    hold before the first segment (nothing and the inputs and weights: the graph's
    start). With `offsets`, the segments' offsets are kept (pinned segments agree on
    them). Returns the steps and where each segment's steps start (one more entry: the end)."""
    g = problem.graph
    steps: list[Step] = []
    starts: list[int] = []
    resident = set() if resident is None else set(resident)
    stored = {t for t in problem.sizes if g.tensors[t].kind in ("input", "weight")} if stored is None else set(stored)
    for seg, sub in zip(segs, plans):
        starts.append(len(steps))
        keep, ended = set(seg.carried_out), False
        for s in sub:
            if s.kind == "compute" and s.op in (BEGIN, END):
                ended = s.op == END
                continue
            if (s.kind == "load" and s.tensor in resident) or (s.kind == "store" and s.tensor in stored) or (
                    s.kind == "free" and ended and s.tensor in keep):
                continue
            steps.append(Step(s.kind, s.tensor, s.offset, s.op, s.offsets) if offsets else
                         Step(s.kind, tensor=s.tensor, op=s.op))
            advance(problem, resident, stored, s)
        for t in sorted(resident - keep):
            steps.append(Step("free", tensor=t))
        resident &= keep
    return steps, starts + [len(steps)]


def advance(problem: Problem, resident: set[str], stored: set[str], s: Step) -> None:
    """What fast memory (`resident`) and slow memory (`stored`) hold after step `s`,
    updated in place: the one rule every pass over a plan's steps here follows."""
    if s.kind == "load":
        resident.add(s.tensor)  # type: ignore[arg-type]
    elif s.kind == "store":
        stored.add(s.tensor)  # type: ignore[arg-type]
    elif s.kind == "free":
        resident.discard(s.tensor)  # type: ignore[arg-type]
    else:
        resident |= {t for t in problem.graph.op(s.op).outputs if t in problem.sizes}  # type: ignore[arg-type]
