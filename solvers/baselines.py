"""COSMA's four baselines: schedule {file order, min-peak order} x replacement {Belady,
greedy}, offsets from TFLite's greedy-by-size arena allocator (COSMA, arXiv 2311.18246).

The replacement pass walks the schedule with a byte budget. Before each op it loads the
op's missing inputs and makes room for its outputs; when they do not fit it evicts
resident tensors the op does not need:
- Belady evicts the tensor whose next use is furthest away (Belady's MIN, 1966);
- greedy evicts the locally cheapest set: already-clean tensors first (free to drop),
  then dirty ones, which must be stored first, choosing sets that overshoot the bytes
  needed the least.
An evicted activation with a future use is stored first unless slow memory already has
it. Graph outputs are stored right after they are computed; dead tensors are freed.

Offsets come afterwards, from the residency intervals. When fragmentation makes the
arena exceed the capacity, the pass reruns with a smaller byte budget (spilling more
rather than failing). As a last resort every op runs alone: its inputs are loaded, its
outputs stored, and all are freed after it, which fits any capacity >= M_R.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from planner.bounds import check_budget, min_peak
from planner.ir import Bytes
from planner.plan import Plan, SolverInfo, Step
from planner.problem import Problem, align_up
from planner.solvers import alloc
from planner.solvers.alloc import Buffer, greedy_by_size

NAMES = ("file-belady", "file-greedy", "minpeak-belady", "minpeak-greedy")


@dataclass
class Params:
    order: str = "file"  # "file": the graph's order; "minpeak": planner.bounds.min_peak's order
    replacement: str = "belady"  # "belady" or "greedy"
    schedule: list[str] | None = None  # an explicit op order; overrides `order`
    shrink_tries: int = 24  # reruns with a smaller byte budget when offsets do not fit
    beam: int = 20_000  # min-peak search width (see planner.bounds.min_peak)
    time_limit: float | None = 60.0  # for the min-peak search


def solve(problem: Problem, params: Params | None = None) -> Plan:
    """A plan from one baseline; raises Infeasible below M_R.

    Parameters
    ----------
    problem : the graph, target (capacity = budget) and options.
    params : which order and replacement; defaults to file order + Belady.

    Returns
    -------
    Plan with status "heuristic"; metrics are left to the simulator.
    """
    params = params or Params()
    t0 = time.perf_counter()
    check_budget(problem)
    if params.schedule is not None:
        order = list(params.schedule)
    elif params.order == "minpeak" and not problem.fixed_order:
        order = min_peak(problem, beam=params.beam, time_limit=params.time_limit).order
    else:
        order = [o.name for o in problem.graph.ops]
    steps = _fit(problem, order, params)
    traffic = sum(problem.sizes[s.tensor] for s in steps if s.kind in ("load", "store"))  # type: ignore[index]
    info = SolverInfo(f"{params.order}-{params.replacement}", "heuristic",
                      objective=traffic - problem.compulsory_bytes(), seconds=time.perf_counter() - t0)
    return Plan.build(problem, steps, info)


def _fit(problem: Problem, order: list[str], params: Params) -> list[Step]:
    """Replacement, then offsets; shrinks the byte budget until the offsets fit."""
    budget = problem.capacity
    for _ in range(params.shrink_tries):
        steps = _replace(problem, order, budget, params.replacement)
        arena, placed = _place(problem, steps)
        if arena <= problem.capacity:
            return placed
        budget -= max(arena - problem.capacity, problem.target.alignment)
        if budget <= 0:
            break
    return _one_op_at_a_time(problem, order)


def _uses(problem: Problem, order: list[str]) -> dict[str, list[int]]:
    """Positions in `order` at which each tracked tensor is read, ascending."""
    uses: dict[str, list[int]] = {t: [] for t in problem.sizes}
    for i, name in enumerate(order):
        for t in problem.graph.op(name).inputs:
            if t in uses:
                uses[t].append(i)
    return uses


def _replace(problem: Problem, order: list[str], budget: Bytes, policy: str) -> list[Step]:
    """Load/compute/store/free steps (offsets unset) keeping resident bytes <= budget,
    or each op's footprint where that is larger."""
    g, size = problem.graph, problem.sizes
    uses = _uses(problem, order)
    resident: dict[str, Bytes] = {}
    in_slow = {t for t in size if g.tensors[t].kind in ("input", "weight")}
    steps: list[Step] = []

    def next_use(t: str, i: int) -> float:
        return next((u for u in uses[t] if u > i), float("inf"))

    def evict(t: str, i: int) -> None:
        if t not in in_slow and next_use(t, i - 1) != float("inf"):
            steps.append(Step("store", tensor=t))
            in_slow.add(t)
        steps.append(Step("free", tensor=t))
        del resident[t]

    for i, name in enumerate(order):
        op = g.op(name)
        need = problem.tensors_of(op)
        missing = [t for t in need if t not in resident]
        over = sum(resident.values()) + sum(size[t] for t in missing) - max(budget, problem.footprint(op))
        if over > 0:
            candidates = [t for t in resident if t not in need]
            for t in _victims(candidates, over, policy, size, in_slow, lambda t: next_use(t, i)):
                evict(t, i)
        for t in missing:
            if t in op.inputs:
                steps.append(Step("load", tensor=t))
                resident[t] = size[t]
        steps.append(Step("compute", op=name))
        for t in op.outputs:
            if t in size:
                resident[t] = size[t]
                if g.tensors[t].kind == "output":
                    steps.append(Step("store", tensor=t))
                    in_slow.add(t)
        for t in need:  # free what no later op reads
            if next_use(t, i) == float("inf") and t in resident:
                steps.append(Step("free", tensor=t))
                del resident[t]
    return steps


def _victims(candidates: list[str], over: Bytes, policy: str, size: dict[str, Bytes], in_slow: set[str],
             next_use) -> list[str]:
    """Which resident tensors to evict to free `over` bytes, by policy."""
    if policy == "belady":
        ranked = sorted(candidates, key=lambda t: (-next_use(t), -size[t]))
        out, freed = [], 0
        for t in ranked:
            if freed >= over:
                break
            out.append(t)
            freed += size[t]
        return out
    # greedy: clean tensors cost nothing now, dirty ones cost a store; within each class
    # cover the remaining bytes with the least overshoot.
    out = []
    for group in ([t for t in candidates if t in in_slow], [t for t in candidates if t not in in_slow]):
        pool = sorted(group, key=lambda t: size[t])
        while over > 0 and pool:
            fits = next((t for t in pool if size[t] >= over), None)
            t = fits if fits is not None else pool[-1]  # smallest that covers, else largest
            pool.remove(t)
            out.append(t)
            over -= size[t]
    return out


def _place(problem: Problem, steps: list[Step]) -> tuple[Bytes, list[Step]]:
    """Offsets for every residency by greedy-by-size; returns the arena and the steps."""
    buffers, owner = residencies(problem, steps)
    offsets = greedy_by_size(buffers, problem.target.alignment)
    arena = max((o + b.size for o, b in zip(offsets, buffers)), default=0)
    return arena, with_offsets(steps, owner, offsets)


def residencies(problem: Problem, steps: list[Step]) -> tuple[list[Buffer], list[tuple[int, str]]]:
    """One buffer per residency of `steps`, from the load or compute that opens it to the
    free that ends it (the end of the plan if none), aligned as the target asks; and for
    each buffer the step that opened it and its tensor, for `with_offsets`."""
    buffers: list[Buffer] = []
    open_: dict[str, int] = {}  # tensor -> index into buffers of its current residency
    owner: list[tuple[int, str]] = []
    a = problem.target.alignment
    for i, s in enumerate(steps):
        new = [s.tensor] if s.kind == "load" else (
            [t for t in problem.graph.op(s.op).outputs if t in problem.sizes] if s.kind == "compute" else [])
        for t in new:
            open_[t] = len(buffers)  # type: ignore[index]
            buffers.append(Buffer(t, i, len(steps), problem.sizes[t], a))  # type: ignore[arg-type,index]
            owner.append((i, t))  # type: ignore[arg-type]
        if s.kind == "free":
            buffers[open_.pop(s.tensor)].upper = i  # type: ignore[arg-type]
    return buffers, owner


def with_offsets(steps: list[Step], owner: list[tuple[int, str]], offsets: list[int]) -> list[Step]:
    """A copy of `steps` with the offsets of the buffers `residencies` returned written into
    the loads and computes that open them."""
    placed = [Step(s.kind, s.tensor, s.offset, s.op, dict(s.offsets) if s.offsets is not None else None)
              for s in steps]
    for (i, t), off in zip(owner, offsets):
        s = placed[i]
        if s.kind == "load":
            s.offset = off
        else:
            s.offsets = {**(s.offsets or {}), t: off}
    for s in placed:
        if s.kind == "compute" and s.offsets is None:
            s.offsets = {}
    return placed


def offsets_of(steps: list[Step], owner: list[tuple[int, str]]) -> list[int | None]:
    """The offset `steps` give each buffer `residencies` found (at the load or compute
    that opens it): `with_offsets` read back."""
    out: list[int | None] = []
    for i, t in owner:
        s = steps[i]
        out.append(s.offset if s.kind == "load" else (s.offsets or {}).get(t))
    return out


def offset_error(problem: Problem, steps: list[Step]) -> str | None:
    """Why the offsets `steps` carry do not place every residency within the capacity
    (one missing, two overlapping, one above it); None when they do."""
    bufs, where = residencies(problem, steps)
    offsets = offsets_of(steps, where)
    if None in offsets:
        return f"residency of {where[offsets.index(None)][1]} has no offset"
    try:
        alloc.validate(bufs, offsets, problem.capacity)
    except alloc.InvalidPacking as e:
        return str(e)
    return None


def pinned(problem: Problem, steps: list[Step], first: dict[str, int], last: dict[str, int],
           time_limit: float) -> list[Step] | None:
    """`steps` with the offsets of the residencies open at the first compute (tensors in
    `first`) and at the last one (in `last`) fixed there: a segment of a larger plan placed
    to continue it (solvers.dnc, solvers.lns). Steps whose offsets already place every
    residency that way come back as they are; otherwise every offset is placed again,
    greedy first, then the exact allocator for `time_limit` seconds. None when no packing
    within the capacity is found (or one residency would need two places)."""
    bufs, where = residencies(problem, steps)
    had = offsets_of(steps, where)
    computes = [i for i, s in enumerate(steps) if s.kind == "compute"]
    for b, (_, t) in zip(bufs, where):
        at = {first[t]} if t in first and b.lower <= computes[0] < b.upper else set()
        at |= {last[t]} if t in last and b.lower <= computes[-1] < b.upper else set()
        if len(at) > 1:
            return None
        b.offset = at.pop() if at else None
    if None not in had and all(b.offset in (None, o) for b, o in zip(bufs, had)):
        return steps
    if alloc.fixed_conflict(bufs, problem.capacity):  # two pinned residencies meet
        return None
    offsets = alloc.greedy(bufs, problem.target.alignment)
    if alloc.height(bufs, offsets) > problem.capacity:
        r = alloc.solve(bufs, problem.capacity, alloc.Params(time_limit=max(0.01, time_limit), greedy_first=False))
        if r.offsets is None:
            return None
        offsets = r.offsets
    return with_offsets(steps, where, offsets)


def _one_op_at_a_time(problem: Problem, order: list[str]) -> list[Step]:
    """Each op alone in fast memory: load inputs, compute, store what is read later or is
    an output, free all. Tensors are packed largest-padding-last, so the op fits in its
    footprint (planner.problem.Problem.footprint)."""
    g, size, a = problem.graph, problem.sizes, problem.target.alignment
    uses = _uses(problem, order)
    steps: list[Step] = []
    for i, name in enumerate(order):
        op = g.op(name)
        need = sorted(problem.tensors_of(op), key=lambda t: align_up(size[t], a) - size[t])
        at, offset = 0, {}
        for t in need:
            offset[t] = at
            at += align_up(size[t], a)
        steps += [Step("load", tensor=t, offset=offset[t]) for t in need if t in op.inputs]
        steps.append(Step("compute", op=name, offsets={t: offset[t] for t in op.outputs if t in size}))
        for t in op.outputs:
            if t in size and (g.tensors[t].kind == "output" or any(u > i for u in uses[t])):
                steps.append(Step("store", tensor=t))
        steps += [Step("free", tensor=t) for t in need]
    return steps
