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
    "auto": ("file-belady", "file-greedy", "minpeak-belady", "minpeak-greedy", "exact"),
}
# `auto` runs the exact solver up to this many ops and dnc beyond (which computes the four
# baselines itself, so on large graphs they are not run again as separate candidates).
AUTO_EXACT_MAX_OPS = 200
PORTFOLIO_HELP = {
    "baseline": "the best of COSMA's four baselines",
    "auto": f"portfolio: the four baselines, then the exact solver warm-started from them (up to "
            f"{AUTO_EXACT_MAX_OPS} ops) or dnc (larger graphs, baselines inside); the best plan wins",
}


def solver(name: str, **overrides: Any) -> Callable[[Problem], Plan]:
    """A function problem -> Plan for one registered solver, its Params filled in."""
    if name not in SOLVERS:
        raise BadInput(f"unknown solver {name!r}; choose one of {', '.join([*PORTFOLIOS, *SOLVERS])}")
    module_name, kwargs, _ = SOLVERS[name]
    module = importlib.import_module(module_name)
    names = {f for f in module.Params.__dataclass_fields__}
    params = module.Params(**{**kwargs, **{k: v for k, v in overrides.items() if k in names}})
    return lambda problem: module.solve(problem, params)


def members(name: str, ops: int | None = None) -> tuple[str, ...]:
    """The solvers a name stands for: a portfolio's members, or the solver itself. For
    `auto` on a graph of more than AUTO_EXACT_MAX_OPS `ops`: dnc alone."""
    if name == "auto" and ops is not None and ops > AUTO_EXACT_MAX_OPS:
        return ("dnc",)
    if name in PORTFOLIOS:
        return PORTFOLIOS[name]
    if name in SOLVERS:
        return (name,)
    raise BadInput(f"unknown solver {name!r}; choose one of {', '.join([*PORTFOLIOS, *SOLVERS])}")
