"""CP-SAT cross-check for offset allocation: one NoOverlap2D over (time, address) boxes.

Slower than the exact search at finding packings on hard instances; it exists to check the
search, and `alloc.solve` hands it the second half of a time limit the search ran out of:
its energy reasoning proves some tight instances infeasible at once. Sizes are divided by
their common divisor first, which keeps the offset domains small.
"""
from __future__ import annotations

import math
import time

from ortools.sat.python import cp_model

from planner.solvers.alloc import AllocResult, Buffer, greedy, height, load
from planner.solvers.alloc_check import validate


def cpsat_solve(buffers: list[Buffer], capacity: int | None = None, time_limit: float | None = None,
                workers: int = 2) -> AllocResult:
    """Decides `capacity` (status feasible / infeasible / timeout), or with capacity None
    minimises the height (optimal / feasible with the solver's bound / timeout)."""
    start = time.monotonic()
    unit = 0  # canonical offsets are sums of sizes rounded up to alignments: multiples of this
    for b in buffers:
        unit = math.gcd(unit, b.size, b.alignment, b.offset or 0)
    unit = math.gcd(unit, capacity or 0) or 1
    top = capacity if capacity is not None else max(load(buffers), height(buffers, greedy(buffers)))
    limit = top // unit
    model = cp_model.CpModel()

    # offset[i] = the address of buffer i, in units; time boxes are fixed, address boxes slide.
    offset, steps, space = [], [], []
    for i, b in enumerate(buffers):
        a = b.alignment // math.gcd(b.alignment, unit)
        if b.offset is not None:
            o = model.NewConstant(b.offset // unit)
        else:
            k = model.NewIntVar(0, max(limit - b.size // unit, -1) // a, f"slot_{b.id}")
            o = model.NewIntVar(0, limit, f"offset_{b.id}")
            model.Add(o == a * k)
        offset.append(o)
        steps.append(model.NewFixedSizeIntervalVar(b.lower, b.upper - b.lower, f"steps_{b.id}"))
        space.append(model.NewFixedSizeIntervalVar(o, b.size // unit, f"space_{b.id}"))

    # Buffers alive at the same step share no address.
    model.AddNoOverlap2D(steps, space)

    # Objective (minimise only): the height, at least LOAD.
    if capacity is None:
        h = model.NewIntVar(-(-load(buffers) // unit), limit, "height")
        for b, o in zip(buffers, offset):
            model.Add(o + b.size // unit <= h)
        model.Minimize(h)
    else:
        for b, o in zip(buffers, offset):
            model.Add(o + b.size // unit <= limit)

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    if time_limit is not None:
        solver.parameters.max_time_in_seconds = time_limit
    st = solver.Solve(model)
    found = st in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    offsets = [solver.Value(o) * unit for o in offset] if found else None
    if offsets is not None:
        validate(buffers, offsets, capacity)
    lb = load(buffers)
    if capacity is None and found:
        lb = max(lb, int(math.ceil(solver.BestObjectiveBound() - 1e-9)) * unit)
        status = "optimal" if st == cp_model.OPTIMAL else "feasible"
    elif capacity is not None:
        status = {cp_model.OPTIMAL: "feasible", cp_model.FEASIBLE: "feasible", cp_model.INFEASIBLE: "infeasible"}.get(
            st, "timeout")
        if status == "infeasible":
            lb = max(lb, capacity + 1)
    else:
        status = "infeasible" if st == cp_model.INFEASIBLE else "timeout"
    return AllocResult(status, offsets, None if offsets is None else height(buffers, offsets), lb, load(buffers),
                       time.monotonic() - start, "cpsat", capacity=capacity)
