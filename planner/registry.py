"""Solver names -> the module that implements them, imported only when asked for.

Every entry is `module:params` where the module exposes `solve(problem, params) -> Plan`
and `Params`; the keyword arguments fill Params. `auto` is a portfolio, not an entry:
see planner.api.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from planner.errors import BadInput
from planner.plan import Plan
from planner.problem import Problem

# name -> (module, Params keyword arguments, one-line description)
SOLVERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "file-belady": ("planner.solvers.baselines", {"order": "file", "replacement": "belady"},
                    "COSMA baseline: file order, Belady eviction, TFLite greedy-by-size offsets"),
    "file-greedy": ("planner.solvers.baselines", {"order": "file", "replacement": "greedy"},
                    "COSMA baseline: file order, locally cheapest evictions, TFLite offsets"),
    "minpeak-belady": ("planner.solvers.baselines", {"order": "minpeak", "replacement": "belady"},
                       "COSMA baseline: min-peak order (DP), Belady eviction, TFLite offsets"),
    "minpeak-greedy": ("planner.solvers.baselines", {"order": "minpeak", "replacement": "greedy"},
                       "COSMA baseline: min-peak order (DP), locally cheapest evictions, TFLite offsets"),
    "exact": ("planner.solvers.exact", {},
              "order + replacement MIP (HiGHS) with exact offsets; optimal or feasible with a proven gap"),
    "dnc": ("planner.solvers.dnc", {"workers": 2},
            "divide and conquer for large graphs: min-peak order cut into segments, each solved exactly, stitched"),
}
PORTFOLIOS: dict[str, tuple[str, ...]] = {
    "baseline": ("file-belady", "file-greedy", "minpeak-belady", "minpeak-greedy"),
    "auto": ("file-belady", "file-greedy", "minpeak-belady", "minpeak-greedy", "exact", "dnc"),
}
# `auto` sizes a graph by its joint exact model (solvers.exact.model.columns), not its op
# count: a chain of 300 ops is trivial, a 200-op layered DAG is not. Up to this many
# columns it runs the four baselines, the exact solver (with part of the time) and, unless
# that proves the optimum, dnc with the rest; beyond, dnc alone (which runs the baselines
# itself, so on large graphs they are not run again as separate candidates). Measured
# (cosma-int8): DenseNet-121 (308 ops) 3,287 columns, proven optimal at M_H in about a
# second; layered DAGs of 100 ops about 16,000; DARTS V2 31,064, the transformer 43,577,
# NASNet-A 63,762, layered DAGs of 200 ops 54,068 (dnc's segments suit those).
AUTO_EXACT_MAX_COLUMNS = 20_000
PORTFOLIO_HELP = {
    "baseline": "the best of COSMA's four baselines",
    "auto": f"portfolio: the four baselines, then the exact solver warm-started from them and dnc if "
            f"exact proves nothing (joint models of up to {AUTO_EXACT_MAX_COLUMNS:,} columns), or dnc alone "
            f"(larger, baselines inside); the best plan wins, with the best bound any of them or "
            f"solvers.lower found",
}


def solver(name: str, **overrides: Any) -> Callable[[Problem], Plan]:
    """A function problem -> Plan for one registered solver, its Params filled in; an
    override its Params do not have is dropped (the API offers every solver the same
    time limit, schedule, lower bound and progress callback)."""
    if name not in SOLVERS:
        raise BadInput(f"unknown solver {name!r}; choose one of {', '.join([*PORTFOLIOS, *SOLVERS])}")
    module_name, kwargs, _ = SOLVERS[name]
    module = importlib.import_module(module_name)
    names = {f for f in module.Params.__dataclass_fields__}
    params = module.Params(**{**kwargs, **{k: v for k, v in overrides.items() if k in names}})
    return lambda problem: module.solve(problem, params)


def exact_columns(problem: Problem) -> int:
    """The estimated column count of `problem`'s joint exact model (see AUTO_EXACT_MAX_COLUMNS)."""
    from planner.solvers.exact.model import columns

    return columns(problem)


def members(name: str, problem: Problem | None = None) -> tuple[str, ...]:
    """The solvers a name stands for: a portfolio's members, or the solver itself. For
    `auto` on a `problem` whose joint model exceeds AUTO_EXACT_MAX_COLUMNS: dnc alone;
    on one that fits in a single dnc segment: no dnc."""
    if name == "auto" and problem is not None:
        if exact_columns(problem) > AUTO_EXACT_MAX_COLUMNS:
            return ("dnc",)
        dnc = importlib.import_module(SOLVERS["dnc"][0])
        if len(problem.graph.ops) <= dnc.Params().segment_ops:  # one segment: dnc would rerun exact
            return PORTFOLIOS[name][:-1]
    if name in PORTFOLIOS:
        return PORTFOLIOS[name]
    if name in SOLVERS:
        return (name,)
    raise BadInput(f"unknown solver {name!r}; choose one of {', '.join([*PORTFOLIOS, *SOLVERS])}")
