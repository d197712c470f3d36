"""Large-neighbourhood search: a plan improved one window at a time, for the whole time
limit or until it meets a lower bound.

dnc plans each segment with what crosses its cuts fixed beforehand, so a store in one
segment and the reload it pays for in the next, or an op that would rather run on the
other side of a cut, are never decided together. Here the plan itself fixes the rest:
a **window**, `window_ops` consecutive ops of the plan's order, becomes a dnc segment
problem whose boundaries are what the plan holds at the window's two ends

    prefix (fixed) | B ──> window ops (re-solved) ──> E | suffix (fixed)
                     B: the plan's resident tensors      E: what the suffix expects
                        there; the activations slow         resident; the ones it
                        memory already holds are read       reloads without storing
                        (spilling them costs no store)      them itself are stored

and is solved exactly, the order free within `radius` places (`dnc._solve_segment`),
then spliced back (stores slow memory already holds and loads of resident tensors
dropped). The tensors B and E carry are pinned where the plan has them, so the window's
solve packs its residencies around the plan's and the spliced plan keeps every offset;
the solve starts from the plan's own steps there (`_incumbent`) when they are a plan of
the window. Only when nothing fits around the pins in time is the window solved
unpinned and the whole plan placed again; where that overflows, the window's budget is
lowered by the overflow and the window solved once more. A window's plan is kept only
when it moves fewer bytes and the simulator replays it without fault, so the search
never makes a plan worse.

Each sweep first tries the **spans** of the reloads that move the most bytes (up to
`spans`, each once per plan, `span_time_limit` seconds each): the ops from where the plan
freed the tensor to the op that reads it again, which hold the whole choice between
keeping it and spilling it (`_spans`). Then the grid: windows
overlap by half, and each sweep starts a third of a window further on, so every cut of
an earlier sweep, and of dnc's passes, lies inside a later window. Grid windows whose
steps move no non-compulsory byte are skipped (nothing there to save). A sweep that
improves nothing widens the windows by half, up to `max_window_ops`; two such sweeps at
that width end the search early: every window is then at a local optimum.

Before the first sweep, the spans of the `others` (the plans dnc's passes and baselines
made) are tried too, on each plan that would end below the start if its spans kept their
tensors: whether a span keeps its tensor depends on where the rest of the plan sits.
On PNASNet-5 at M_H one pass hands over 997,088 B, and its one reload's span finds a plan
without it that no packing of the whole plan places; from the previous pass's 1,039,424 B
the same span is kept at once (250,880 B). The search goes on from the best plan.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

from planner.bounds import LowerBound, check_budget, known, min_peak
from planner.plan import Plan, SolverInfo, Step
from planner.problem import Problem, align_up
from planner.solvers import alloc, baselines, dnc

__all__ = ["Params", "solve"]


@dataclass
class Params:
    time_limit: float | None = 60.0  # seconds for the whole search (None: until it settles)
    start: list[Step] | None = None  # the plan to improve, offsets placed; the best COSMA baseline when None
    # other placed plans (dnc's passes and baselines) whose reload spans are tried before the
    # search: one that moves more bytes can end below `start` (module docstring)
    others: tuple[list[Step], ...] = ()
    window_ops: int = 40  # ops per window at first
    max_window_ops: int = 120  # widest window (sweeps that improve nothing widen them)
    radius: int = 40  # most places an op may move from the plan's order in a window (0: fixed order)
    window_time_limit: float = 5.0  # seconds for one window's exact solve, at most (many windows, not a few proofs)
    spans: int = 4  # most reload spans per sweep, those that move the most bytes
    span_time_limit: float = 1.0  # seconds for a span's solve: one that keeps the tensor is quick (0.1 s on PNASNet-5)
    backend: str = "highs"  # the exact solver's back end
    alloc_time_limit: float = 2.0  # seconds for the exact offset search of a spliced plan
    # seconds for that search over the whole plan, placed afresh where placing it near the old
    # one failed: it rarely succeeds then (none of 7 on a 500-op layered DAG at M_H, 14.5 s
    # of 45); what the caller needs is mostly the greedy packing's overflow, to lower the budget
    replace_time_limit: float = 0.25
    lower_bound: LowerBound = None  # no plan moves fewer non-compulsory bytes: stop on reaching it
    progress: Callable[[dict], None] | None = None  # called with {"traffic", "bound", "elapsed"} on each improvement


def solve(problem: Problem, params: Params | None = None) -> Plan:
    """The start plan improved window by window (see the module docstring).

    Parameters
    ----------
    problem : graph, target (capacity = budget); recompute is not used.
    params : the start plan, window sizes, time limits, lower bound, progress callback.

    Returns
    -------
    Plan with status "optimal" when its non-compulsory traffic meets `lower_bound` (or is
    zero), else "feasible" with that bound (0 without one). `extra["log"]` has one line per
    improvement and per sweep.

    Raises
    ------
    Infeasible : the budget is below M_R.
    """
    params = params or Params()
    t0 = time.perf_counter()
    deadline = t0 + (math.inf if params.time_limit is None else params.time_limit)
    check_budget(problem)
    steps = params.start
    if steps is None:  # the best of the four baselines, as dnc and exact start
        order = min_peak(problem, time_limit=None if deadline == math.inf else max(1.0, 0.3 * params.time_limit)).order
        runs = [baselines.solve(problem, baselines.Params(replacement=r, schedule=s))
                for s in (None, order) for r in ("belady", "greedy")]
        steps = min(runs, key=lambda p: traffic(problem, p.steps)).steps
    cost = traffic(problem, steps)
    if params.start is None:
        _report(params, cost, t0)
    log: list[str] = []
    spanned: set[tuple[int, tuple[int, int]]] = set()  # (plan's traffic, span) tried
    width, sweep, settled = params.window_ops, 0, 0

    def going() -> bool:  # a window given less than a segment's minimum returns at once: it would count as tried
        return cost > known(params.lower_bound) and deadline - time.perf_counter() > dnc.MIN_SEGMENT_SECONDS

    span_params = replace(params, window_time_limit=min(params.window_time_limit, params.span_time_limit))
    for other in sorted(params.others, key=lambda s: traffic(problem, s)):
        other_cost, spans = traffic(problem, other), _spans(problem, other)
        windows = _top(spans, params, lambda w: False)
        if other == steps or other_cost - sum(spans[w] for w in windows) >= cost:
            continue  # the start itself, or its spans cannot take it below the start
        for lo, hi in windows:
            if not going():
                break
            found = _window(problem, other, lo, hi, span_params, deadline)
            if found is not None:
                other, other_cost = found
        if other_cost < cost:
            steps, cost = other, other_cost
            log.append(f"lns: another start's spans -> non-compulsory {cost}")
            _report(params, cost, t0)
    while going() and settled < 2:
        n = sum(1 for s in steps if s.kind == "compute")
        width = min(width, n)
        stride = max(1, width // 2)
        first = (sweep * max(1, width // 3)) % stride
        starts = {min(max(0, lo), n - width) for lo in range(first - stride, n - 1, stride)}
        # first the spans of the reloads moving the most bytes, each once per plan (told
        # apart by traffic: a kept window lowers it), then the grid windows that move the
        # most bytes: where there is the most to save
        spans = _spans(problem, steps)
        windows = _top(spans, params, lambda w: (cost, w) in spanned)
        n_spans = len(windows)
        cut = _cuts(steps)
        moved = {lo: _moved(problem, steps, cut[lo], cut[lo + width]) for lo in starts}
        windows += [(lo, lo + width) for lo in sorted((lo for lo in starts if moved[lo] > 0),
                                                      key=lambda lo: (-moved[lo], lo))]
        improved, tried = 0, 0
        for i, (lo, hi) in enumerate(windows):
            if not going():
                break
            span = i < n_spans  # a grid window that happens to match a span keeps its full time
            if span:
                spanned.add((cost, (lo, hi)))
            found = _window(problem, steps, lo, hi, span_params if span else params, deadline)
            tried += 1
            if found is not None:
                steps, cost = found
                improved += 1
                log.append(f"lns sweep {sweep}: window [{lo}, {hi}) -> non-compulsory {cost}")
                _report(params, cost, t0)
        log.append(f"lns sweep {sweep}: {width}-op windows from {first} after {n_spans} spans, "
                   f"{tried} tried, {improved} improved")
        sweep += 1
        if not improved:
            if width >= min(params.max_window_ops, n):
                settled += 1
            width = min(params.max_window_ops, width * 3 // 2)
        else:
            settled = 0
    info = SolverInfo.proven("lns", cost, known(params.lower_bound), time.perf_counter() - t0)
    plan = Plan.build(problem, steps, info)
    plan.extra = {"log": log}
    return plan


def traffic(problem: Problem, steps: list[Step]) -> int:
    """Non-compulsory bytes of `steps` (DESIGN §3)."""
    return sum(problem.sizes[s.tensor] for s in steps if s.kind in ("load", "store")) - problem.compulsory_bytes()


def _report(params: Params, cost: int, t0: float) -> None:
    if params.progress is not None:
        params.progress({"traffic": cost, "bound": known(params.lower_bound), "elapsed": time.perf_counter() - t0})


def _window(problem: Problem, steps: list[Step], lo: int, hi: int, params: Params,
            deadline: float) -> tuple[list[Step], int] | None:
    """Ops lo..hi-1 of the plan's order re-solved with the rest fixed: the new plan, placed
    and replayed, and its traffic; or None when the window moves no non-compulsory byte,
    or no plan of it moves fewer bytes and fits once placed. First with the residencies
    that end or start near the window stretched across its cuts (`_boundary`), then as
    the plan has them; each pinned to the plan's offsets, and where nothing fits around
    the pins, unpinned with the whole plan placed again (an overflow then lowers the
    window's budget by the overflow, once per try)."""
    from planner.runtime.simulator import PlanViolation, simulate

    g = problem.graph
    cut = _cuts(steps)
    if not _moved(problem, steps, cut[lo], cut[hi]):
        return None
    cost = traffic(problem, steps)
    # (stretch, capacity, pinned): first with the window placed around the plan's offsets
    tries = [(True, problem.capacity, True), (False, problem.capacity, True)]
    while tries:
        stretch, capacity, pin = tries.pop(0)
        left = deadline - time.perf_counter()
        if left <= dnc.MIN_SEGMENT_SECONDS:
            return None
        b = _boundary(problem, steps, cut, lo, hi, stretch)
        if stretch and not (b.stretched_in or b.stretched_out):
            continue  # the same as the try without stretching
        seg = dnc._segment(problem, b.order, lo, hi, b.carried_in, b.carried_out, capacity, params.backend,
                           params.radius, b.has_copy, b.need_copy)
        if pin:
            seg.pinned, seg.pinned_end = b.pinned, b.pinned_end
            seg.start = _incumbent(seg, steps[cut[lo]:cut[hi]], b.stretched_in, b.stretched_out)
        seg.time_limit = min(params.window_time_limit, left)
        seg.stop = time.time() + seg.time_limit
        easy = dnc._no_spill(seg)
        sub = dnc._pinned(seg, easy) if easy is not None else None
        if sub is None and (easy is None or not pin):  # unpinned, a plan without spills may not pack alone
            sub = dnc._solve_segment(seg)
        if sub is None:
            if pin:  # nothing fits around the plan's offsets in time: place the whole plan again
                tries.insert(0, (stretch, capacity, False))
            continue
        body, _ = dnc._stitch(problem, [seg], [sub], set(b.carried_in), b.stored, offsets=pin)
        new = _tidy(problem, b.head + body + b.tail)
        new_cost = traffic(problem, new)
        if new_cost >= cost:
            if capacity == problem.capacity:
                return None  # the window is at a local optimum (stretched or not: one try is enough)
            continue
        budget = min(params.alloc_time_limit, max(0.1, left))
        placed = new if pin and baselines.offset_error(problem, new) is None else _place_near(problem, steps, new, budget)
        excess: list[int] = []
        if placed is None:
            placed, excess = _place(problem, new, min(budget, params.replace_time_limit))
        if placed is not None:
            try:
                simulate(Plan.build(problem, placed, SolverInfo("lns", "feasible")), g, problem.target)
            except PlanViolation:
                continue
            return placed, new_cost
        # the window's residencies overflow once placed: lower its budget by the overflow
        over = max(excess[len(b.head):len(b.head) + len(body) + 1], default=0)
        lowered = max(_need(seg), capacity - max(over, problem.target.alignment))
        if over > 0 and lowered < capacity == problem.capacity:
            tries.insert(0, (stretch, lowered, False))
    return None


def _need(seg: dnc._Segment) -> int:
    return max(seg.problem.footprint(o) for o in seg.problem.graph.ops)


def _place(problem: Problem, steps: list[Step], time_limit: float) -> tuple[list[Step] | None, list[int]]:
    """Offsets for every residency of `steps`: the greedy arena allocators, then the exact
    search. Returns the steps with offsets (None when they do not fit) and, per step, by
    how many bytes the best greedy packing overflows the capacity there."""
    a, cap = problem.target.alignment, problem.capacity
    bufs, where = baselines.residencies(problem, steps)
    offsets = alloc.greedy(bufs, a)
    excess = [0] * (len(steps) + 1)
    if alloc.height(bufs, offsets) > cap:
        r = alloc.solve(bufs, cap, alloc.Params(time_limit=time_limit, greedy_first=False))
        if r.offsets is None:
            for b, off in zip(bufs, offsets):
                if off + b.size > cap:
                    for i in range(b.lower, b.upper + 1):  # the free step too
                        excess[i] = max(excess[i], off + b.size - cap)
            return None, excess
        offsets = r.offsets
    return baselines.with_offsets(steps, where, offsets), excess


def _incumbent(seg: dnc._Segment, region: list[Step], into: frozenset[str] = frozenset(),
               out_of: frozenset[str] = frozenset()) -> list[Step] | None:
    """The plan's own steps of a window as a plan of its segment problem, so the window's
    solve starts from the plan it must beat: B loads and makes what is carried in at its
    pinned offsets, E reads what is carried out. A residency stretched into the window
    (`into`) is freed again right after B, as the plan had it, and one stretched out of it
    (`out_of`) is loaded again at its pinned offset before E, where the plan reloaded it
    after the window. None where the steps are no valid plan of it."""
    from planner.runtime.simulator import PlanViolation, simulate

    pr = seg.problem
    ops = pr.graph.ops
    steps: list[Step] = []
    if ops[0].name == dnc.BEGIN:
        steps += [Step("load", tensor=t, offset=seg.pinned.get(t)) for t in ops[0].inputs]
        steps.append(Step("compute", op=dnc.BEGIN, offsets={t: seg.pinned.get(t) for t in ops[0].outputs}))
        steps += [Step("free", tensor=t) for t in sorted(into)]
    resident, stored = _scan(pr, steps, set(), set())
    for s in region:  # the frees of what the window's start already dropped are left out
        if s.kind == "compute" or (s.tensor in pr.sizes and (s.kind != "free" or s.tensor in resident)):
            steps.append(Step(s.kind, s.tensor, s.offset, s.op, s.offsets))
            dnc.advance(pr, resident, stored, s)
    if ops[-1].name == dnc.END:
        steps += [Step("load", tensor=t, offset=seg.pinned_end.get(t)) for t in sorted(out_of - resident)]
        resident |= out_of
        steps.append(Step("compute", op=dnc.END, offsets={}))
    steps += [Step("free", tensor=t) for t in sorted(resident)]
    try:
        simulate(Plan.build(pr, steps, SolverInfo("lns", "feasible")), pr.graph, pr.target, check_metrics=False)
    except (PlanViolation, KeyError, ValueError):
        return None
    return steps


@dataclass
class _Boundary:
    """A window's two cuts as the plan (possibly stretched) has them, and the plan around it."""

    order: list[str]
    head: list[Step]  # the steps before the window (offsets kept), frees of what is dead there added
    tail: list[Step]  # the steps after it
    carried_in: list[str]
    carried_out: list[str]
    has_copy: frozenset[str]
    need_copy: frozenset[str]
    stored: set[str]  # what slow memory holds at the window's start
    stretched_in: frozenset[str]  # residencies stretched into the window (their frees before it dropped)
    stretched_out: frozenset[str]  # and out of it (their loads after it dropped)
    pinned: dict[str, int]  # carried in: the offsets the plan has them at
    pinned_end: dict[str, int]  # carried out: the offsets the rest of the plan expects them at


def _boundary(problem: Problem, steps: list[Step], cut: list[int], lo: int, hi: int, stretch: bool) -> _Boundary:
    """What crosses the cuts of window [lo, hi). With `stretch`, a live tensor the plan
    frees before the window and loads in it stays resident up to the window (its free
    dropped), and one the window leaves resident or uses and the plan loads again after
    it stays resident up to that load (the load dropped), largest first, where the
    resident bytes stay within the capacity at every step: the window may then keep
    them, which no window alone can decide when the free or the load lies outside it."""
    g, size, a = problem.graph, problem.sizes, problem.target.alignment
    order = [s.op for s in steps if s.kind == "compute"]
    prefix, region, suffix = steps[:cut[lo]], steps[cut[lo]:cut[hi]], steps[cut[hi]:]
    resident, stored = _scan(problem, prefix)
    after, _ = _scan(problem, region, resident, stored)
    pos = {o: i for i, o in enumerate(order)}
    live_in, live_out = _live(problem, pos, lo), _live(problem, pos, hi)
    carried_in, carried_out = resident & live_in, after & live_out
    drop: set[int] = set()  # step indices
    into: set[str] = set()  # stretched into the window
    out_of: set[str] = set()  # stretched out of it
    pinned = {t: off for t, off in dnc._resident_offsets(prefix).items() if t in carried_in}
    pinned_end = {t: off for t, off in dnc._resident_offsets(steps[:cut[hi]]).items() if t in carried_out}
    if stretch:
        bufs, where = baselines.residencies(problem, steps)
        offsets = baselines.offsets_of(steps, where)
        room = [problem.capacity - b for b in _profile(problem, steps)]
        ends = {(t, b.upper): off for b, (_, t), off in zip(bufs, where, offsets)}  # residency (tensor, free step)

        def fits(t: str, i: int, j: int, off: int | None) -> bool:
            """t resident at `off` during steps i..j-1 too: room in bytes and at that place."""
            n = align_up(size[t], a)
            if off is None or any(room[k] < n for k in range(i, j)) or any(
                    b.lower < j and i < b.upper and o < off + n and off < o + align_up(b.size, a)
                    for b, (_, u), o in zip(bufs, where, offsets) if u != t and o is not None):
                return False
            for k in range(i, j):
                room[k] -= n
            return True

        last_free = {s.tensor: i for i, s in enumerate(prefix) if s.kind == "free"}
        for t in sorted(live_in - resident, key=lambda t: (-size[t], t)):
            if t in last_free and fits(t, last_free[t], cut[lo], ends.get((t, last_free[t]))):
                drop.add(last_free[t])
                carried_in.add(t)
                into.add(t)
                pinned[t] = ends[t, last_free[t]]
        used = {t for o in order[lo:hi] for t in problem.tensors_of(g.op(o))} | carried_in
        first: dict[str, int] = {}
        for i, s in enumerate(suffix, cut[hi]):
            if s.kind in ("load", "store"):
                first.setdefault(s.tensor, i)  # type: ignore[arg-type]
        for t in sorted((live_out & used) - carried_out, key=lambda t: (-size[t], t)):
            if t in first and steps[first[t]].kind == "load" and fits(t, cut[hi], first[t], steps[first[t]].offset):
                drop.add(first[t])
                carried_out.add(t)
                out_of.add(t)
                pinned_end[t] = steps[first[t]].offset  # type: ignore[assignment]

    def bare(i: int, s: Step) -> list[Step]:  # offsets kept: a pinned window continues them
        return [] if i in drop else [Step(s.kind, s.tensor, s.offset, s.op, s.offsets)]

    head = [x for i, s in enumerate(prefix) for x in bare(i, s)]
    head += [Step("free", tensor=t) for t in sorted(resident - live_in)]
    tail = [x for i, s in enumerate(suffix, cut[hi]) for x in bare(i, s)]
    has_copy = frozenset(t for t in carried_in if t in stored and g.tensors[t].kind == "activation")
    need_copy = frozenset(_reloaded(problem, tail) & carried_out)
    return _Boundary(order, head, tail, sorted(carried_in), sorted(carried_out), has_copy, need_copy, stored,
                     frozenset(into), frozenset(out_of), pinned, pinned_end)


def _profile(problem: Problem, steps: list[Step]) -> list[int]:
    """Padded bytes resident after each step."""
    g, a = problem.graph, problem.target.alignment
    out, used = [], 0
    for s in steps:
        if s.kind == "load":
            used += align_up(problem.sizes[s.tensor], a)  # type: ignore[index]
        elif s.kind == "free":
            used -= align_up(problem.sizes[s.tensor], a)  # type: ignore[index]
        elif s.kind == "compute":
            outs = g.op(s.op).outputs  # type: ignore[arg-type]
            used += sum(align_up(problem.sizes[t], a) for t in outs if t in problem.sizes)
        out.append(used)
    return out


def _place_near(problem: Problem, old: list[Step], new: list[Step], time_limit: float) -> list[Step] | None:
    """Offsets for `new` that keep those `old` gives every residency both plans have (same
    tensor, same ops spanned): only what the window changed is placed, around the rest.
    Where memory is nearly full, placing the whole plan again can fail for fragmentation
    although the changed residencies fit where the old ones were. None when no packing is
    found in `time_limit`."""
    bufs, where = baselines.residencies(problem, new)
    old_bufs, old_where = baselines.residencies(problem, old)
    at = dict(zip(_keys(old, old_bufs, old_where), baselines.offsets_of(old, old_where)))
    for b, k in zip(bufs, _keys(new, bufs, where)):
        b.offset = at.get(k)
    if all(b.offset is not None for b in bufs):
        return baselines.with_offsets(new, where, [b.offset for b in bufs])  # type: ignore[misc]
    r = alloc.solve(bufs, problem.capacity, alloc.Params(time_limit=time_limit))
    return None if r.offsets is None else baselines.with_offsets(new, where, r.offsets)


def _keys(steps: list[Step], bufs: list[alloc.Buffer], where: list[tuple[int, str]]) -> list[tuple[str, int, int]]:
    """Per residency: its tensor and the computes before its first and after its last step."""
    done, k = [], 0
    for s in steps:
        done.append(k)
        k += s.kind == "compute"
    done.append(k)
    return [(t, done[b.lower], done[b.upper]) for b, (_, t) in zip(bufs, where)]


def _cuts(steps: list[Step]) -> list[int]:
    """Per cut c of the plan's order (before its c-th compute; 0..n): the index of the
    step where it falls, after the stores and frees that follow compute c - 1."""
    out = [0]
    k = 0
    for i, s in enumerate(steps):
        if s.kind == "compute":
            k = i + 1
            while k < len(steps) and steps[k].kind in ("store", "free"):
                k += 1
            out.append(k)
    out[-1] = len(steps)
    return out


def _scan(problem: Problem, steps: list[Step], resident: set[str] | None = None,
          stored: set[str] | None = None) -> tuple[set[str], set[str]]:
    """What fast memory holds and what slow memory holds after `steps`, from the given
    state (the graph's start when None)."""
    g = problem.graph
    resident = set() if resident is None else set(resident)
    stored = {t for t in problem.sizes if g.tensors[t].kind in ("input", "weight")} if stored is None else set(stored)
    for s in steps:
        dnc.advance(problem, resident, stored, s)
    return resident, stored


def _spans(problem: Problem, steps: list[Step]) -> dict[tuple[int, int], int]:
    """Per reload in `steps` (what `_moved` counts: a load of an activation or a graph
    output, a second load of an input or weight), the window [lo, hi) from the cut where
    the plan freed the tensor to the op that reads it again, with the bytes the reloads
    there move (and the stores that paid for them). Such a window holds the whole choice
    between keeping the tensor and spilling it, and little else: on PNASNet-5 at M_H the window over a 394 KB
    reload is solved in 0.1 s, while the 60-op grid windows that hold it and other
    reloads run out of their 5 s."""
    g = problem.graph
    n = sum(1 for s in steps if s.kind == "compute")
    done, freed, seen = 0, {}, set()
    out: dict[tuple[int, int], int] = {}
    for s in steps:
        if s.kind == "compute":
            done += 1
        elif s.kind == "free":
            freed[s.tensor] = done
        elif s.kind == "load":
            if s.tensor in freed and _reload(problem, s.tensor, seen):  # type: ignore[arg-type]
                w = (freed[s.tensor], min(done + 1, n))
                moved = problem.sizes[s.tensor]  # type: ignore[index]
                stored = g.tensors[s.tensor].kind == "activation"  # an output's store is compulsory
                out[w] = out.get(w, 0) + (2 * moved if stored else moved)
            seen.add(s.tensor)
    return out


def _top(spans: dict[tuple[int, int], int], params: Params,
         skip: Callable[[tuple[int, int]], bool]) -> list[tuple[int, int]]:
    """The `params.spans` spans that move the most bytes, at most `max_window_ops` wide,
    but those `skip` names."""
    return [w for w in sorted(spans, key=lambda w: (-spans[w], w))
            if w[1] - w[0] <= params.max_window_ops and not skip(w)][:params.spans]


def _reload(problem: Problem, tensor: str, loaded: set[str]) -> bool:
    """Whether loading `tensor` is non-compulsory: it is an activation (or a graph output),
    or an input or weight `loaded` already holds (its first load is compulsory)."""
    return problem.graph.tensors[tensor].kind not in ("input", "weight") or tensor in loaded


def _moved(problem: Problem, steps: list[Step], i: int, j: int) -> int:
    """Non-compulsory bytes that steps[i:j] move: reloads, loads of activations, stores
    of anything but graph outputs."""
    g = problem.graph
    seen = {s.tensor for s in steps[:i] if s.kind == "load"}
    out = 0
    for s in steps[i:j]:
        kind = g.tensors[s.tensor].kind if s.tensor is not None else None
        if s.kind == "load":
            if _reload(problem, s.tensor, seen):  # type: ignore[arg-type]
                out += problem.sizes[s.tensor]  # type: ignore[index]
            seen.add(s.tensor)
        elif s.kind == "store" and kind != "output":
            out += problem.sizes[s.tensor]  # type: ignore[index]
    return out


def _live(problem: Problem, pos: dict[str, int], c: int) -> set[str]:
    """The tensors used both before position c of the order and at or after it."""
    g = problem.graph
    out = set()
    for t in problem.sizes:
        tt = g.tensors[t]
        uses = [pos[u] for u in tt.consumers] + ([pos[tt.producer]] if tt.producer else [])
        if uses and min(uses) < c <= max(uses):
            out.add(t)
    return out


def _reloaded(problem: Problem, steps: list[Step]) -> set[str]:
    """The activations `steps` load before they store them: slow memory must hold them already."""
    g = problem.graph
    first: dict[str, str] = {}
    for s in steps:
        if s.kind in ("load", "store") and s.tensor not in first:
            first[s.tensor] = s.kind  # type: ignore[index]
    return {t for t, k in first.items() if k == "load" and g.tensors[t].kind == "activation"}


def _tidy(problem: Problem, steps: list[Step]) -> list[Step]:
    """`steps` without the loads of what is resident, the stores of what slow memory
    already holds (tensors never change, so one copy serves every reload) and the stores
    of activations nothing loads afterwards (a window may have made them needless)."""
    g = problem.graph
    resident: set[str] = set()
    stored = {t for t in problem.sizes if g.tensors[t].kind in ("input", "weight")}
    out = []
    for s in steps:
        if (s.kind == "store" and s.tensor in stored) or (s.kind == "load" and s.tensor in resident):
            continue
        out.append(s)
        dnc.advance(problem, resident, stored, s)
    loaded_later: set[str] = set()
    keep = []
    for s in reversed(out):
        if s.kind == "load":
            loaded_later.add(s.tensor)  # type: ignore[arg-type]
        elif s.kind == "store" and s.tensor not in loaded_later and g.tensors[s.tensor].kind != "output":
            continue
        keep.append(s)
    return keep[::-1]
