"""Divide-and-conquer planning for large irregular graphs (NAS networks, thousands of ops).

The schedule is fixed first (the hierarchical min-peak order of `planner.schedule`), then
cut into segments of at most `segment_ops` ops. Each segment becomes a small problem that
the exact solver (`solvers.exact`, fixed order) solves given what crosses its two
boundaries; the segment plans are stitched into one, and offsets are re-placed globally.

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
improve on it (up to offsets). Segments of one pass are independent and run in parallel
processes. The first pass carries every live tensor across its cuts where they fit;
a second pass shifts the cuts by half a segment and carries what the best plan so far
keeps resident there. Stitching drops B, E, the loads of carried tensors and the frees at the cut; a
greedy arena allocator, then the exact one, places every residency. When that does not
fit, the pass is retried with segment budgets lowered by the overflow, and the best
COSMA baseline remains the fallback: the plan never has more traffic than it.

A graph of at most `segment_ops` ops is one segment: `solvers.exact` on the whole problem.
"""
from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from planner.bounds import check_budget, min_peak
from planner.ir import Graph, Op, Tensor
from planner.plan import Plan, SolverInfo, Step
from planner.problem import Problem, align_up
from solvers import alloc, baselines
from solvers import exact as exact_solver

__all__ = ["Params", "solve"]

BEGIN, END = "__dnc_begin", "__dnc_end"  # names of the boundary ops of a segment problem


@dataclass
class Params:
    time_limit: float | None = 60.0  # seconds for the whole solve, schedule and baselines included
    schedule: list[str] | None = None  # the op order (from the API); the min-peak order when None
    segment_ops: int = 40  # most graph ops per segment problem
    passes: int = 2  # boundary passes; pass k shifts the cuts by k / passes of a segment
    workers: int = 1  # processes for the segments of a pass (1: sequential, same plans)
    segment_time_limit: float = 10.0  # seconds per segment's exact solve, at most
    backend: str = "highs"  # the exact solver's back end
    refits: int = 3  # retries of a pass with lower segment budgets when offsets do not fit
    alloc_time_limit: float = 5.0  # seconds for the exact offset search of a stitched plan


def solve(problem: Problem, params: Params | None = None) -> Plan:
    """A plan by divide and conquer; never more traffic than the best COSMA baseline.

    Parameters
    ----------
    problem : graph, target (capacity = budget), fixed_order (recompute is not used).
    params : segment size, passes, workers, time limits.

    Returns
    -------
    Plan with status "optimal" when it moves no non-compulsory byte (or the graph is one
    segment and the exact solver proved it), else "feasible" with bound 0: no global
    bound is computed for stitched plans. `extra` holds the segments and pass log.

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
        p.solver = dataclasses.replace(p.solver, name="dnc", seconds=time.perf_counter() - t0)
        p.extra = {**p.extra, "segments": 1}
        return p
    # the four baselines: the fallback, and the guide (the better one on `order`)
    runs = [(f"{name}-{rep}", baselines.Params(replacement=rep, schedule=sched))
            for name, sched in (("file", None), ("minpeak", order)) for rep in ("belady", "greedy")]
    base = {}
    portable = _portable(problem) if params.workers > 1 else problem
    for (name, _), pl in zip(runs, _map(params.workers, _baseline, [(portable, bp) for _, bp in runs])):
        base[name] = (_cost(problem, pl), pl)
    best_name = min(base, key=lambda k: base[k][0])
    best_cost, best = base[best_name]
    guide_cost, guide = min((base["minpeak-belady"], base["minpeak-greedy"]), key=lambda c: c[0])
    log: list[str] = []
    source = best_name
    if best_cost > 0:
        for k in range(params.passes):
            if time.perf_counter() > deadline:
                log.append(f"pass {k}: skipped, time limit")
                break
            shift = k * params.segment_ops // params.passes
            steps, note = _pass(problem, order, guide.steps, shift, params, deadline)
            if steps is None:
                log.append(f"pass {k}: {note}")
                continue
            pl = Plan.build(problem, steps, SolverInfo("dnc", "feasible"))
            cost = _cost(problem, pl)
            log.append(f"pass {k}: {note}, non-compulsory {cost}")
            if cost < guide_cost:
                guide_cost, guide = cost, pl
            if cost < best_cost:
                best_cost, best, source = cost, pl, f"pass {k}"
    status = "optimal" if best_cost == 0 else "feasible"
    info = SolverInfo("dnc", status, objective=best_cost, bound=0, gap=0.0 if best_cost == 0 else 1.0,
                      seconds=time.perf_counter() - t0)
    plan = Plan.build(problem, best.steps, info)
    plan.extra = {"found_by": source, "baselines": {k: v[0] for k, v in base.items()}, "log": log}
    return plan


def _map(workers: int, fn, items: list) -> list:
    """fn over items, in order: in `workers` processes, or here when workers is 1."""
    if workers > 1 and len(items) > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))
    return [fn(x) for x in items]


def _portable(problem: Problem) -> Problem:
    """The problem with ops stripped of their `fn` (torch callables do not pickle)."""
    ops = [Op(o.name, o.type, list(o.inputs), list(o.outputs), o.flops) for o in problem.graph.ops]
    g = dataclasses.replace(problem.graph, ops=ops)
    return Problem(g, problem.target, problem.fixed_order, problem.allow_recompute, problem.recompute_weight)


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
    time_limit: float
    backend: str


def _pass(problem: Problem, order: list[str], guide: list[Step], shift: int, params: Params,
          deadline: float) -> tuple[list[Step] | None, str]:
    """One pass: cut, solve the segments, stitch, place. Returns the steps (None when the
    offsets never fit) and a note for the log."""
    live = _live_sets(problem, order)
    cuts = _cuts([sum(problem.sizes[t] for t in ts) for ts in live], shift, params.segment_ops)
    carried = [_carry(problem, order, guide, live[c], c, all_live=shift == 0) for c in cuts]
    capacity = problem.capacity
    for attempt in range(params.refits + 1):
        left = deadline - time.perf_counter()
        if left <= 0:
            return None, "time limit before the segments were solved"
        rounds = math.ceil((len(cuts) - 1) / max(1, params.workers))
        limit = max(0.5, min(params.segment_time_limit, 0.8 * left / max(1, rounds)))
        segs = [_segment(problem, order, lo, hi, carried[i], carried[i + 1], capacity, limit, params.backend)
                for i, (lo, hi) in enumerate(zip(cuts, cuts[1:]))]
        plans = _map(params.workers, _solve_segment, segs)
        steps = _stitch(problem, segs, plans)
        placed, arena = _place(problem, steps, params.alloc_time_limit)
        note = f"{len(segs)} segments, cuts shifted by {shift}"
        if placed is not None:
            return placed, note + (f", segment budget {capacity}" if attempt else "")
        capacity -= max(arena - problem.capacity, problem.target.alignment)
        if any(capacity < _need(s) for s in segs):
            break
    return None, f"{len(cuts) - 1} segments: offsets did not fit after {attempt + 1} tries"


def _need(seg: _Segment) -> int:
    return max(seg.problem.footprint(o) for o in seg.problem.graph.ops)


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


def _carry(problem: Problem, order: list[str], guide: list[Step], live: list[str], c: int,
           all_live: bool) -> list[str]:
    """What stays resident across the cut before position c: with `all_live`, every live
    tensor when they fit together (the segments decide what to spill); otherwise, or when
    they do not fit, what the guide keeps there (so the guide's segment is a solution)."""
    if c == 0 or c == len(order):
        return []
    a = problem.target.alignment
    if all_live and sum(align_up(problem.sizes[t], a) for t in live) <= problem.capacity:
        return list(live)
    before, after = _resident_at(problem, order, guide, c)
    return [t for t in live if t in after and t in before]


def _resident_at(problem: Problem, order: list[str], guide: list[Step], c: int) -> tuple[set[str], set[str]]:
    """What the guide has resident right after order[c - 1] computes (its outputs
    included) and right before order[c] computes."""
    resident: set[str] = set()
    after: set[str] = set()
    for s in guide:
        if s.kind == "load":
            resident.add(s.tensor)  # type: ignore[arg-type]
        elif s.kind == "free":
            resident.discard(s.tensor)  # type: ignore[arg-type]
        elif s.kind == "store":
            continue
        elif s.op == order[c]:
            return after, resident
        else:
            resident |= {t for t in problem.graph.op(s.op).outputs if t in problem.sizes}  # type: ignore[arg-type]
            if s.op == order[c - 1]:
                after = set(resident)
    raise AssertionError(f"guide never computes {order[c]}")


def _segment(problem: Problem, order: list[str], lo: int, hi: int, carried_in: list[str], carried_out: list[str],
             capacity: int, time_limit: float, backend: str) -> _Segment:
    """The problem of ops order[lo:hi] between two boundaries (see the module docstring)."""
    g = problem.graph
    ops = [g.op(o) for o in order[lo:hi]]
    inside = {o.name for o in ops}
    pos = {o: i for i, o in enumerate(order)}
    carried_in_set, carried_out_set = set(carried_in), set(carried_out)

    def used_after(t: str) -> bool:
        return any(pos[c] >= hi for c in g.tensors[t].consumers)

    def has_slow_copy(t: str) -> bool:  # at the start of the segment
        kind = g.tensors[t].kind
        return kind in ("input", "weight", "output") or t not in carried_in_set

    begin_reads = [t for t in carried_in if has_slow_copy(t)]
    begin_writes = [t for t in carried_in if not has_slow_copy(t)]
    names = set(begin_reads + begin_writes + list(carried_out))
    for o in ops:
        names |= set(o.inputs) | set(o.outputs)
    tensors: dict[str, Tensor] = {}
    for t in names:
        tt = g.tensors[t]
        if tt.producer in inside or t in begin_writes:
            must_store = tt.kind == "output" or (used_after(t) and t not in carried_out_set)
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
    return _Segment(Problem(sub, target, fixed_order=True), list(carried_in), list(carried_out), time_limit, backend)


def _solve_segment(seg: _Segment) -> list[Step]:
    """The exact solver on one segment (fixed order); its steps."""
    p = exact_solver.solve(seg.problem, exact_solver.Params(time_limit=seg.time_limit, backend=seg.backend,
                                                             order_bound=False, joint=False))
    return p.steps


def _stitch(problem: Problem, segs: list[_Segment], plans: list[list[Step]]) -> list[Step]:
    """One step list from the segment plans (offsets left to `_place`): the boundary ops,
    loads of tensors already resident, stores of tensors slow memory already holds and
    the frees after E are dropped; what a segment leaves resident beyond its carried-out
    tensors is freed at its end."""
    g = problem.graph
    steps: list[Step] = []
    resident: set[str] = set()
    stored = {t for t in problem.sizes if g.tensors[t].kind in ("input", "weight")}
    for seg, sub in zip(segs, plans):
        keep, ended = set(seg.carried_out), False
        for s in sub:
            if s.kind == "compute" and s.op in (BEGIN, END):
                ended = s.op == END
                continue
            if (s.kind == "load" and s.tensor in resident) or (s.kind == "store" and s.tensor in stored) or (
                    s.kind == "free" and ended and s.tensor in keep):
                continue
            steps.append(Step(s.kind, tensor=s.tensor, op=s.op))
            if s.kind == "load":
                resident.add(s.tensor)  # type: ignore[arg-type]
            elif s.kind == "store":
                stored.add(s.tensor)  # type: ignore[arg-type]
            elif s.kind == "free":
                resident.discard(s.tensor)  # type: ignore[arg-type]
            else:
                resident |= {t for t in g.op(s.op).outputs if t in problem.sizes}  # type: ignore[arg-type]
        for t in sorted(resident - keep):
            steps.append(Step("free", tensor=t))
        resident &= keep
    return steps


def _place(problem: Problem, steps: list[Step], time_limit: float) -> tuple[list[Step] | None, int]:
    """Offsets for every residency of `steps`: the greedy arena allocators, then the exact
    search. Returns the steps with offsets (None when they do not fit) and the arena the
    greedy allocators needed."""
    a = problem.target.alignment
    bufs: list[alloc.Buffer] = []
    where: list[tuple[int, str]] = []  # per buffer: the step that opened it and its tensor
    open_: dict[str, int] = {}
    for i, s in enumerate(steps):
        new = [s.tensor] if s.kind == "load" else (
            [t for t in problem.graph.op(s.op).outputs if t in problem.sizes] if s.kind == "compute" else [])
        for t in new:
            open_[t] = len(bufs)  # type: ignore[index]
            bufs.append(alloc.Buffer(t, i, len(steps) + 1, problem.sizes[t], a))  # type: ignore[arg-type,index]
            where.append((i, t))  # type: ignore[arg-type]
        if s.kind == "free":
            bufs[open_.pop(s.tensor)].upper = i + 1  # type: ignore[arg-type]
    offsets = alloc.greedy_by_size(bufs, a)
    arena = alloc.height(bufs, offsets)
    if arena > problem.capacity:
        r = alloc.solve(bufs, problem.capacity, alloc.Params(time_limit=time_limit))
        if r.offsets is None:
            return None, arena
        offsets = r.offsets
    out = [Step(s.kind, tensor=s.tensor, op=s.op, offsets={} if s.kind == "compute" else None) for s in steps]
    for (i, t), off in zip(where, offsets):
        if out[i].kind == "load":
            out[i].offset = off
        else:
            out[i].offsets[t] = off  # type: ignore[index]
    return out, arena
