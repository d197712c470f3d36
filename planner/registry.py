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
    "file-belady": ("solvers.baselines", {"order": "file", "replacement": "belady"},
                    "COSMA baseline: file order, Belady eviction, TFLite greedy-by-size offsets"),
    "file-greedy": ("solvers.baselines", {"order": "file", "replacement": "greedy"},
                    "COSMA baseline: file order, locally cheapest evictions, TFLite offsets"),
    "minpeak-belady": ("solvers.baselines", {"order": "minpeak", "replacement": "belady"},
                       "COSMA baseline: min-peak order (DP), Belady eviction, TFLite offsets"),
    "minpeak-greedy": ("solvers.baselines", {"order": "minpeak", "replacement": "greedy"},
                       "COSMA baseline: min-peak order (DP), locally cheapest evictions, TFLite offsets"),
    "exact": ("solvers.exact", {},
              "order + replacement MIP (HiGHS) with exact offsets; optimal or feasible with a proven gap"),
}
PORTFOLIOS: dict[str, tuple[str, ...]] = {
    "baseline": ("file-belady", "file-greedy", "minpeak-belady", "minpeak-greedy"),
    "auto": ("file-belady", "file-greedy", "minpeak-belady", "minpeak-greedy", "exact"),
}
PORTFOLIO_HELP = {
    "baseline": "the best of COSMA's four baselines",
    "auto": "portfolio: the four baselines, then the exact solver warm-started from them; the best plan wins",
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


def members(name: str) -> tuple[str, ...]:
    """The solvers a name stands for: a portfolio's members, or the solver itself."""
    if name in PORTFOLIOS:
        return PORTFOLIOS[name]
    if name in SOLVERS:
        return (name,)
    raise BadInput(f"unknown solver {name!r}; choose one of {', '.join([*PORTFOLIOS, *SOLVERS])}")
