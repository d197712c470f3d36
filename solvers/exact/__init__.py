"""The exact joint solver: operator order, replacement and offsets, with a proven bound.

Three models, run in this order until the best plan meets a bound (COSMA, arXiv
2311.18246, solves all three decisions in one big-M ILP whose LP bound is zero):

1. For a fixed order (the min-peak order and the file order), replacement is a
   time-indexed 0-1 programme (`model.py`): r[t, s] keeps tensor t resident at step s,
   l[t, s] reloads it, st[t] stores an activation once, so any number of spill/reload
   cycles, reloads at new offsets and free eviction of clean tensors are allowed. Fast
   memory is one capacity row per step, a relaxation with a real LP bound; the
   residencies are then packed (greedy by size, then the exact allocator) and a pattern
   that provably does not fit is cut off and the programme solved again (logic-based
   Benders, Hooker & Ottosson). Where the graph admits one order only, this is the answer.
2. Over all orders, lower bounds from the spine relaxation (`stages.py`: a chain of ops
   every order runs in sequence, the other ops placed in the gaps between them, memory
   checked at the chain's ops; one chain per graph input) and from the relative-order
   relaxation (`orders.py`: only which op runs before which, and what is resident
   during each op). The spine solution's order is planned by (1) as well.
3. The joint model, (1) with x[o, s] placing each op inside its ASAP/ALAP window,
   warm-started from the best plan, for the time left, when it is small enough to help.

Every candidate is replayed by the simulator; COSMA's four baselines are candidates too,
so the answer never has more traffic than the best of them. Back ends: HiGHS (default),
CBC, CP-SAT (`backends.py`). With `allow_recompute` the objective is non-compulsory bytes
plus `recompute_weight` per recomputed FLOP: the fixed-order model may bring an activation
back by re-running its producer (its inputs resident at that step), and the bounds charge
each come-back the lesser of a load and a recompute; the relative-order and joint models,
which charge stores, are not used then.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from planner.bounds import LowerBound, check_budget, known, min_peak
from planner.plan import Plan, SolverInfo
from planner.problem import Problem
from planner.solvers import baselines
from planner.solvers.exact import backends, decode, orders as order_model, stages
from planner.solvers.exact.model import Flags, build, columns, windows

__all__ = ["Params", "improve", "solve"]


@dataclass
class Params:
    time_limit: float | None = 60.0  # seconds for the whole solve, baselines included
    backend: str = "highs"  # "highs" (highspy), "cbc" (PuLP) or "cpsat" (OR-Tools)
    threads: int = 1  # solver threads; keep at most 2 on the benchmark machines
    schedule: list[str] | None = None  # a min-peak order (from the API); computed when None
    # Ops only inside their ASAP/ALAP windows.
    windows: bool = True
    # Loads only at a step that uses the tensor (a later load is never worse).
    jit_loads: bool = True
    # A residency ends at a use of its tensor (keeping it longer only costs room).
    early_evict: bool = True
    # Precedence on cumulative sums per step (off: one row per edge on positions).
    strong_precedence: bool = True
    # Cuts: a live tensor is resident unless spilled, and a spill costs a reload (and a store).
    liveness_cuts: bool = True
    # Bound over orders from the spine relaxation (solvers.exact.stages), and its order as a candidate.
    spine_bound: bool = True
    # Bound over orders from the relative-order relaxation (solvers.exact.orders).
    order_bound: bool = True
    # Triangle rows of the relative-order relaxation, added where its solution has a cycle.
    lazy_transitivity: bool = True
    # The joint time-indexed model of order and replacement, after the stages above.
    joint: bool = True
    joint_max_columns: int = 40_000  # skip the joint model past this size (estimated)
    # Start the solver from the best baseline.
    warm_start: bool = True
    # Seconds for each exact packing of a solution's residencies.
    alloc_time_limit: float = 5.0
    # A proven bound from elsewhere (solvers.lower, from the API): the solve stops once a plan
    # meets it. The value it has when the solve starts counts.
    lower_bound: LowerBound = None
    # Offsets of the residencies open at the first step and at the last (the tensors a dnc
    # segment or an LNS window carries in and out, where the plan around it placed them).
    pinned: dict[str, int] = field(default_factory=dict)
    pinned_end: dict[str, int] = field(default_factory=dict)
    # A valid plan of the problem (an LNS window's incumbent): a candidate and a warm start.
    start: Plan | None = None
    dump_lp: str | None = None  # write the joint model here (LP/MPS by the back end)
    log: list[str] = field(default_factory=list, repr=False)  # one line per round, for benchmarks


def solve(problem: Problem, params: Params | None = None) -> Plan:
    """The plan of least non-compulsory traffic, or the best found with its gap.

    Parameters
    ----------
    problem : graph, target (capacity = budget), fixed_order / allow_recompute.
    params : back end, time limit and the switches above.

    Returns
    -------
    Plan with status "optimal" (objective equals a proven bound) or "feasible" (bound and
    gap set). Never more traffic than the best COSMA baseline.

    Raises
    ------
    Infeasible : the budget is below M_R.

    Examples
    --------
    >>> from tests.graphs import chain
    >>> from planner.ir import Target
    >>> p = solve(Problem(chain([4, 8, 2, 16]), Target("t", 20, alignment=1, element_bytes=1)))
    >>> p.solver.status, p.solver.objective
    ('optimal', 0)
    """
    params = params or Params()
    t0 = time.perf_counter()
    limit = math.inf if params.time_limit is None else params.time_limit
    # A reserve for reading, placing and replaying the last solution, so the call ends in time.
    deadline = t0 + limit - min(2.0, 0.05 * limit)
    check_budget(problem)
    flags = _flags(params)
    orders = _orders(problem, params, deadline)
    best: _Best = _Best(None, math.inf)
    fallback = None  # with pins, a baseline that could not be placed to meet them
    if params.start is not None:
        best.offer(params.start, _cost(problem, params.start), "start")
    for order in orders:  # COSMA's baselines on each candidate order
        for replacement in ("belady", "greedy"):
            p = baselines.solve(problem, baselines.Params(replacement=replacement, schedule=order))
            fallback = fallback or p
            if params.pinned or params.pinned_end:
                steps = baselines.pinned(problem, p.steps, params.pinned, params.pinned_end,
                                         min(params.alloc_time_limit, 0.1 * limit))
                if steps is None:
                    continue
                p = Plan.build(problem, steps, p.solver)
            best.offer(p, _cost(problem, p), f"baseline {replacement}")
    bound = known(params.lower_bound)
    if best.cost > bound:
        # Stage 1: the replacement problem, exactly, on each candidate order. Where the
        # graph leaves one order only (or the order is fixed), its bound is the answer's.
        win = windows(problem, True)
        forced = problem.fixed_order or all(lo == hi for lo, hi in win.values())
        redo = "plan" if problem.allow_recompute else ""
        for i, order in enumerate(orders):
            if best.cost <= bound:  # a baseline or an earlier order met the bound given
                break
            f = build(problem, flags, order, recompute=redo)
            lb = _rounds(f, problem, params, best, deadline, f"order {i}", _hint(f, problem, order, params))
            if forced:  # with recompute, that model restricts it: the bound comes from its relaxation
                bound = max(bound, _relaxed_bound(problem, params, flags, order, deadline) if redo else lb)
        # The joint model's size: one column per op and step of its window, per tensor and
        # step it may be resident. Past `joint_max_columns` its LP does not solve in time.
        size = columns(problem, win)
        joint = params.joint and not forced and size <= params.joint_max_columns
        # Stage 2: bounds over all orders, the spine relaxation first (small, and its
        # solution suggests an order), then the relative-order relaxation.
        if not forced and params.spine_bound and best.cost > bound:
            now = time.perf_counter()
            share = now + (deadline - now) * (0.85 if params.order_bound or joint else 1.0)
            bound = max(bound, _spine_bound(problem, params, flags, best, share, orders[0]))
        if not forced and params.order_bound and best.cost > bound and not redo:
            now = time.perf_counter()
            share = now + (deadline - now) / 2 if joint else deadline
            bound = max(bound, _order_bound(problem, params, best.cost, share))
        # Stage 3: the joint model, warm-started from the best plan, for what is left. With
        # recompute allowed it has no recompute columns: it still searches the orders (so
        # allowing recompute never ends worse than forbidding it), but its bound is not one.
        if joint and best.cost > bound and deadline - time.perf_counter() > 1.0:
            f = build(problem, flags)
            hint = _encode(f, problem, best.plan, params)
            joint_bound = _rounds(f, problem, params, best, deadline, "joint", hint)
            bound = bound if redo else max(bound, joint_bound)
        elif not forced and not joint:
            params.log.append(f"joint model skipped: about {size} columns")
    if best.plan is None:  # no plan meets the pins: the caller checks them
        best = _Best(fallback, _cost(problem, fallback), "baseline (pins not met)")
    info = SolverInfo.proven("exact", best.cost, bound, time.perf_counter() - t0)
    plan = Plan.build(problem, best.plan.steps, info)
    plan.extra = {"found_by": best.source}
    return plan


def improve(problem: Problem, plan: Plan, window: dict[str, tuple[int, int]], params: Params | None = None) -> Plan:
    """`plan`, or a better plan in its neighbourhood: the joint model (3) with each op o at
    a step of window[o] (which must hold the plan's own order), warm-started from `plan`,
    for params.time_limit. A neighbourhood narrow enough to solve is how large graphs
    reorder (solvers.dnc's segments, solvers.lns's windows) where the joint model on the
    whole graph is far too big.

    Returns the better plan with status "optimal" when nothing better exists in the
    neighbourhood, else "feasible"; objective in both cases, bound 0 (a neighbourhood's
    bound is no bound on the problem)."""
    params = params or Params()
    t0 = time.perf_counter()
    deadline = t0 + (math.inf if params.time_limit is None else params.time_limit)
    flags = _flags(params)
    best = _Best(plan, _cost(problem, plan), "start")
    f = build(problem, flags, window=window)
    bound = _rounds(f, problem, params, best, deadline, "window", _encode(f, problem, plan, params))
    info = SolverInfo("exact", "optimal" if best.cost <= bound else "feasible", objective=best.cost, bound=0.0,
                      gap=0.0 if best.cost == 0 else 1.0, seconds=time.perf_counter() - t0)
    out = Plan.build(problem, best.plan.steps, info)
    out.extra = {"found_by": best.source}
    return out


def _flags(params: Params) -> Flags:
    """The model switches `params` sets."""
    return Flags(params.windows, params.jit_loads, params.early_evict, params.strong_precedence, params.liveness_cuts)


@dataclass
class _Best:
    plan: Plan | None
    cost: float
    source: str = ""

    def offer(self, plan: Plan, cost: float, source: str) -> None:
        if cost < self.cost:
            self.plan, self.cost, self.source = plan, cost, source


def _orders(problem: Problem, params: Params, deadline: float) -> list[list[str]]:
    """Candidate orders: the min-peak order (the API's or computed) and the file order."""
    file = [o.name for o in problem.graph.ops]
    if problem.fixed_order:
        return [file]
    mp = params.schedule
    if mp is None:
        mp = min_peak(problem, time_limit=max(1.0, (deadline - time.perf_counter()) / 4)).order
    return [mp] if mp == file else [mp, file]


def _hint(f, problem: Problem, order: list[str], params: Params) -> list[int] | None:
    """The better baseline on `order` (or the start plan, when better), encoded."""
    best = _Best(None, math.inf)
    if params.start is not None:
        best.offer(params.start, _cost(problem, params.start), "start")
    for replacement in ("belady", "greedy"):
        p = baselines.solve(problem, baselines.Params(replacement=replacement, schedule=order))
        best.offer(p, _cost(problem, p), replacement)
    return _encode(f, problem, best.plan, params)


def _encode(f, problem: Problem, plan: Plan | None, params: Params) -> list[int] | None:
    if not params.warm_start or plan is None:
        return None
    try:
        return decode.encode(f, problem, plan.steps)
    except KeyError:  # the plan's order lies outside the model's windows
        return None


def _rounds(f, problem: Problem, params: Params, best: _Best, deadline: float, label: str, hint) -> float:
    """Solves `f`, places the residencies, cuts what does not fit, until proven or out of
    time. Offers every placed solution to `best`; returns the proven bound in bytes."""
    bound, unit = 0.0, f.obj_unit
    # Bytes are whole, so a bound rounds up; with fractional recompute charges it cannot.
    integral = f.model.integral()
    for k in range(1, 10_000):
        left = deadline - time.perf_counter()
        joint = label == "joint"
        if left <= (3.0 if joint else 0.05):
            break
        res = backends.solve(f.model, params.backend, left - (1.0 if joint else 0.0), params.threads, hint,
                             params.dump_lp if k == 1 and joint else None, isolate=joint)
        if res.bound == math.inf:  # the cuts left no solution: every pattern breaks the pins
            params.log.append(f"{label} round {k}: no residency pattern fits around the pinned offsets")
            break
        if res.bound > -math.inf:
            bound = max(bound, (math.ceil(res.bound - 1e-6) if integral else res.bound - 1e-6) * unit)
        params.log.append(f"{label} round {k}: {res.status}, objective {res.objective}, bound {res.bound}, "
                          f"{res.seconds:.2f} s, {len(f.model.lb)} columns, {len(f.model.row_lo)} rows")
        if res.x is None:
            break
        sol = decode.read(f, problem, res.x)
        bufs = decode.buffers(problem, sol)
        budget = min(params.alloc_time_limit, max(deadline - time.perf_counter(), 0.01))
        pinned = decode.pin(bufs, f.n, params.pinned, params.pinned_end)
        fit, offsets = decode.place(problem, bufs, budget) if pinned else (decode.NO_FIT, None)
        if fit == decode.FITS:
            at = dict(zip(_runs(sol), offsets))  # type: ignore[arg-type]
            plan = Plan.build(problem, decode.steps_of(problem, sol, at), SolverInfo("exact", "feasible"))
            best.offer(plan, _cost(problem, plan), label)
            break  # optimal for this model, or the back end stopped on time
        if fit == decode.UNKNOWN:
            params.log.append(f"{label}: packing timed out, no valid cut; stopping")
            break
        lo, hi = decode.core(problem, bufs, f.n, budget) if pinned else (0, f.n)
        decode.cut(f, sol, lo, hi, f"nofit_{k}_{lo}_{hi}")
        params.log.append(f"{label} round {k}: residencies do not fit in steps [{lo}, {hi}): cut")
        hint = _encode(f, problem, best.plan, params) if label == "joint" else hint
    return bound


def _order_bound(problem: Problem, params: Params, target: float, deadline: float) -> float:
    """The relative-order relaxation's bound in bytes; triangle rows are added for the
    3-cycles of each solution until none is left, the bound reaches `target`, or time ends."""
    m, unit = order_model.build(problem)
    bound = 0.0
    for k in range(1, 50):
        left = deadline - time.perf_counter()
        if left <= 3.0:
            break
        res = backends.solve(m, params.backend, left - 1.0, params.threads, None, bound_only=True,
                             isolate=len(m.lb) > 2000)
        params.log.append(f"orders round {k}: {res.status}, objective {res.objective}, bound {res.bound}, "
                          f"{res.seconds:.2f} s, {len(m.lb)} columns, {len(m.row_lo)} rows")
        if res.bound > -math.inf:
            bound = max(bound, math.ceil(res.bound - 1e-6) * unit)
        if res.status != backends.OPTIMAL or bound >= target or not params.lazy_transitivity:
            break
        if not order_model.add_triangles(m, res.x):
            break
    return bound


def _spine_bound(problem: Problem, params: Params, flags: Flags, best: _Best, deadline: float,
                 tie: list[str]) -> float:
    """The best bound in bytes of the spine relaxation over its chains (each gets an equal
    share of the time); the order each solution suggests is planned by the fixed-order model."""
    chains = stages.spines(problem)
    bound = 0.0
    for i, chain in enumerate(chains):
        now = time.perf_counter()  # the heaviest chain, first, gets most of the time
        until = now + (deadline - now) * (0.8 if i == 0 and len(chains) > 1 else 1 / (len(chains) - i))
        if until - now <= 3.0 or best.cost <= bound:
            break
        rel = stages.Relaxation(problem, chain)
        # the objective is integral: beyond this, proven (no plan yet where pins exclude the baselines)
        enough = None if best.cost == math.inf else math.ceil(best.cost / rel.unit) - 1 + 1e-3
        res = backends.solve(rel.model, params.backend, until - now - 1.0, params.threads, None,
                             isolate=len(rel.model.lb) > 2000, stop_at=enough)
        params.log.append(f"spine {i} ({len(chain)} ops) : {res.status}, objective {res.objective}, bound "
                          f"{res.bound}, {res.seconds:.2f} s, {len(rel.model.lb)} columns, {len(rel.model.row_lo)} rows")
        bound = max(bound, rel.bytes(res.bound))
        if res.x is not None and best.cost > bound:
            order = rel.order_of(res.x, tie)
            f = build(problem, flags, order, recompute="plan" if problem.allow_recompute else "")
            _rounds(f, problem, params, best, deadline, f"spine {i} order", _hint(f, problem, order, params))
    return bound


def _runs(sol: decode.Solution):
    return [(t, lo) for t, rs in sol.runs.items() for lo, _ in rs]


def _relaxed_bound(problem: Problem, params: Params, flags: Flags, order: list[str], deadline: float) -> float:
    """A bound in bytes on every plan of `order` when recompute is allowed (the "relax" model)."""
    f = build(problem, flags, order, recompute="relax")
    res = backends.solve(f.model, params.backend, max(deadline - time.perf_counter(), 0.05), params.threads, None)
    params.log.append(f"relaxed recompute model: {res.status}, bound {res.bound}, {res.seconds:.2f} s")
    return max(0.0, math.ceil(res.bound - 1e-6) * f.obj_unit) if res.bound > -math.inf else 0.0


def _cost(problem: Problem, plan: Plan) -> float:
    """The objective: non-compulsory bytes, plus recompute_weight per recomputed FLOP."""
    from planner.runtime.simulator import simulate

    m = simulate(plan, problem.graph, problem.target, check_metrics=False).metrics
    if not problem.allow_recompute:
        return m.noncompulsory_bytes
    g = problem.graph
    seen: set[str] = set()
    flops = 0
    for s in plan.steps:
        if s.kind == "compute":
            if s.op in seen:
                flops += g.op(s.op).flops
            seen.add(s.op)
    return m.noncompulsory_bytes + problem.recompute_weight * flops
