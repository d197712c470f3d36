"""The pass entry point: model in, validated plan out.

`plan()` lowers the model with the right frontend, computes the reference budgets, runs
the chosen solver (or the `auto` portfolio, which always includes COSMA's baselines),
replays every candidate in the independent simulator and returns the best one, its
metrics taken from the replay.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from planner import bounds as _bounds
from planner import registry
from planner.errors import BadInput, PlannerError, SolverTimeout
from planner.ir import Graph, Target, get_target
from planner.plan import Plan, SolverInfo
from planner.problem import Problem
from planner.solvers.lower import Beside, Bound, lower_bound
from planner.units import budget_name, parse_bytes

def load_graph(model: Any, *, target: str | Target = "cosma-int8", inputs: tuple | None = None,
               shapes: dict[str, tuple[int, ...]] | None = None, fuse: bool | None = None,
               decompose_attention: bool | None = None, name: str | None = None) -> Graph:
    """Lowers a model to the IR: an ONNX path or ModelProto, an nn.Module or GraphModule
    with example `inputs`, a zoo model's name, or a Graph (returned as is).

    `fuse` folds BN and activations into the op before them; `decompose_attention` (torch
    models; an ONNX file has it decomposed already) lowers scaled_dot_product_attention as
    the ops the ONNX exporter writes, whose intermediates an accelerator holds. Both default
    to True on accelerator targets and False on GPU targets, so every caller that lowers
    for one target gets the same graph."""
    accelerator = resolve_target(target).kind == "accelerator"
    fuse = accelerator if fuse is None else fuse
    decompose_attention = accelerator if decompose_attention is None else decompose_attention
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix.lower() == ".onnx" or path.exists() or os.sep in str(model):
            from planner.frontends.onnx import load_onnx

            return load_onnx(path, shapes=shapes, fuse=fuse, name=name)
        return _load_zoo(str(model), fuse=fuse, decompose_attention=decompose_attention)
    type_name = type(model).__module__ + "." + type(model).__name__
    if type_name == "onnx.onnx_ml_pb2.ModelProto" or type(model).__name__ == "ModelProto":
        from planner.frontends.onnx import load_onnx

        return load_onnx(model, shapes=shapes, fuse=fuse, name=name)
    import torch

    if isinstance(model, torch.nn.Module):
        if inputs is None:
            raise BadInput("a torch model needs example inputs: plan(model, inputs=(x,), ...)")
        from planner.frontends import fx

        if isinstance(model, torch.fx.GraphModule) and not hasattr(model, "_graph_signature"):
            return fx.load_graph_module(model, inputs, fuse=fuse, decompose_attention=decompose_attention, name=name)
        return fx.load_module(model, tuple(inputs), fuse=fuse, decompose_attention=decompose_attention, name=name)
    raise BadInput(f"cannot plan a {type_name}: pass an ONNX path, an nn.Module with inputs, or a zoo name")


def _load_zoo(name: str, *, fuse: bool, decompose_attention: bool) -> Graph:
    try:
        from planner import models
    except ImportError:  # the zoo is an optional part of the install
        raise BadInput(f"{name!r} is not a file, and the model zoo is not installed") from None
    entry = models.get(name)  # raises BadInput naming the known models
    from planner.frontends.fx import load_module

    return load_module(entry.build().eval(), models.example_inputs(entry), fuse=fuse,
                       decompose_attention=decompose_attention, name=name)


def resolve_target(target: str | Target) -> Target:
    if isinstance(target, Target):
        return target
    try:
        return get_target(target)
    except ValueError as e:
        raise BadInput(str(e)) from None


def resolve_budget(budget: int | str | None, problem: Problem, budgets: Callable[[], _bounds.Budgets]) -> int:
    """Bytes for a budget given as bytes, a size with a unit, or M_R / M_H / M_P."""
    if budget is None:
        return problem.target.capacity
    if name := budget_name(budget):
        return budgets().get(name)
    return parse_bytes(budget)


def plan(model: Any, budget: int | str | None = None, *, target: str | Target = "cosma-int8", solver: str = "auto",
         time_limit: float = 60.0, inputs: tuple | None = None, shapes: dict[str, tuple[int, ...]] | None = None,
         fuse: bool | None = None, decompose_attention: bool | None = None, fixed_order: bool = False,
         allow_recompute: bool = False, validate: bool = True, progress: Callable[[str], None] | None = None) -> Plan:
    """Plans `model` in a fast memory of `budget` bytes.

    Parameters
    ----------
    model : ONNX path or ModelProto, nn.Module / GraphModule (with `inputs`), zoo name, or Graph.
    budget : bytes (int), a size such as "2MiB", or "M_R" / "M_H" / "M_P"; default: the
        target's capacity. What it covers is the target's: activations only, or weights
        too (`track_weights`).
    target : a preset name (planner.ir.TARGETS) or a Target.
    solver : a registered solver, "baseline" (best of COSMA's four) or "auto".
    time_limit : seconds for the whole solve, bounds included (the lower bound runs in a
        second process beside the solvers, until the limit or until it proves the plan).
    fuse : fold BN and activations into the op before them; default: True on
        accelerator targets, False on GPU targets.
    decompose_attention : lower a torch model's scaled_dot_product_attention as separate
        ops (K transposed, scaled q and k, scores, softmax), as an accelerator runs it and
        the ONNX exporter writes it; default: True on accelerator targets, False on GPU
        targets (one fused kernel).
    fixed_order, allow_recompute : DESIGN §3 options, honoured by solvers that support them.
    validate : replay every candidate in the simulator (on by default; metrics come from it).

    Returns
    -------
    Plan, with `metrics` from the simulator and `extra["budgets"]` holding M_R, M_P, M_H.
    `solver.bound` is the best proven lower bound on non-compulsory bytes that any member
    or `solvers.lower` found (`extra["bound"]` says which), `solver.gap` follows from it,
    and the status is "optimal" when the plan meets it, else "feasible".

    Raises
    ------
    BadInput / UnsupportedModel : the model or an argument cannot be used.
    Infeasible : the budget is below M_R (the message names the op and M_R).
    SolverTimeout : no plan within the time limit.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    tgt = resolve_target(target)
    say("lowering model")
    graph = load_graph(model, target=tgt, inputs=inputs, shapes=shapes, fuse=fuse,
                       decompose_attention=decompose_attention)
    problem = Problem(graph, tgt, fixed_order=fixed_order, allow_recompute=allow_recompute)
    cache: list[_bounds.Budgets] = []

    def get_budgets() -> _bounds.Budgets:
        if not cache:
            say("computing M_R / M_P")
            cache.append(_bounds.budgets(problem, time_limit=max(1.0, time_limit / 3)))
        return cache[0]

    capacity = resolve_budget(budget, problem, get_budgets)
    return plan_problem(graph, tgt, capacity, cache[0] if cache else None, solver=solver, time_limit=time_limit,
                        fixed_order=fixed_order, allow_recompute=allow_recompute, validate=validate,
                        progress=progress, started=t0)


def plan_problem(graph: Graph, target: Target, budget_bytes: int, budgets: _bounds.Budgets | None = None, *,
                 solver: str = "auto", time_limit: float = 60.0, fixed_order: bool = False,
                 allow_recompute: bool = False, validate: bool = True,
                 progress: Callable[[str], None] | None = None, started: float | None = None) -> Plan:
    """What `plan` does once the model is lowered: solve a lowered `graph` in `budget_bytes`
    of `target`'s fast memory and return the best validated plan.

    It exists so that callers planning one graph many times (`planner.sweep`) lower it and
    compute its reference `budgets` once and ship both to every solve; `budgets` None
    computes them here, after the budget is checked against M_R (so an infeasible budget
    fails fast). `time_limit` counts from `started` (default: now), which lets `plan`
    include its lowering in the limit. Arguments and errors otherwise as for `plan`.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter() if started is None else started
    problem = Problem(graph, target.with_capacity(budget_bytes), fixed_order=fixed_order,
                      allow_recompute=allow_recompute)
    _bounds.check_budget(problem)
    if budgets is None:
        say("computing M_R / M_P")
        budgets = _bounds.budgets(problem, time_limit=max(1.0, time_limit / 3))
    b = budgets
    chosen = registry.members(solver, problem)
    lower = _lower_bound(problem, b, chosen, time_limit - (time.perf_counter() - t0), say)
    try:
        best, candidates, found = _portfolio(problem, b, chosen, lower, time_limit, t0, fixed_order, validate, say)
        assert best.metrics is not None
        if isinstance(lower, Beside):  # what the bound proves by the time limit, or until it proves the plan
            say("lower bound")
            left = 0.0 if _proven(best, found, 0) else time_limit + BOUND_GRACE - (time.perf_counter() - t0)
            lower = lower.finish(left, enough=best.metrics.noncompulsory_bytes)
    finally:
        if isinstance(lower, Beside):  # an error or Ctrl-C on the way: stop the child
            lower.stop()
    found.insert(0, (lower.bytes, f"lower bound: {lower.how}"))  # first: a member that relays it ties
    how = _report_bound(best, found)
    best.extra = {
        **best.extra,  # what the solver itself reported (e.g. exact's found_by, dnc's passes)
        "budgets": {"M_R": b.m_r, "M_R_op": b.m_r_op, "M_P": b.m_p, "M_P_exact": b.m_p_exact, "M_H": b.m_h,
                    "compulsory_bytes": b.compulsory},
        "bound": {"bytes": best.solver.bound, "how": how, "lower_bound": lower.bytes, "lower_how": lower.how,
                  "lower_seconds": round(lower.seconds, 4)},
        "candidates": candidates,
        **({"auto": _auto_note(chosen, problem)} if solver == "auto" else {}),
        "total_seconds": round(time.perf_counter() - t0, 4),
    }
    return best


def _portfolio(problem: Problem, b: _bounds.Budgets, chosen: tuple[str, ...], lower: Bound | Beside,
               time_limit: float, t0: float, fixed_order: bool, validate: bool, say: Callable[[str], None]
               ) -> tuple[Plan, list[dict[str, Any]], list[tuple[float, str]]]:
    """Runs the `chosen` solvers in turn, each replayed by the simulator: the best plan,
    what each member did, and the (bytes, solver) bounds they proved. A member is skipped
    once the best plan meets a bound (theirs or the lower bound so far)."""
    from planner.runtime.simulator import simulate

    now = (lambda: lower.bytes) if isinstance(lower, Bound) else lower.now
    best: Plan | None = None
    candidates: list[dict[str, Any]] = []
    found: list[tuple[float, str]] = []
    for name in chosen:
        remaining = time_limit - (time.perf_counter() - t0)
        if best is not None and _proven(best, found, now()):
            candidates.append({"solver": name, "skipped": "best plan proven optimal"})
            continue
        if remaining <= 0 and best is not None:
            candidates.append({"solver": name, "skipped": "time limit"})
            continue
        if name == "exact" and "dnc" in chosen:
            remaining *= AUTO_EXACT_SHARE  # dnc gets the rest unless exact proves the optimum
        say(f"solving with {name}")
        ordered = (name.startswith("minpeak") or name in ("exact", "dnc")) and not fixed_order  # reuse the M_P order
        spare = {}
        if isinstance(lower, Beside) and name == "dnc":  # the bound's process keeps a core of its own
            spare["workers"] = max(1, min(registry.SOLVERS[name][1]["workers"], (os.cpu_count() or 1) - 1))
        run = registry.solver(name, time_limit=max(remaining, 1.0), schedule=b.order if ordered else None,
                              lower_bound=now, progress=_relay(name, say, found, now, t0), **spare)
        try:
            p = run(problem)
        except SolverTimeout as e:
            candidates.append({"solver": name, "error": str(e)})
            continue
        if validate or p.metrics is None:
            p.metrics = simulate(p, problem.graph, problem.target, check_metrics=False).metrics
        candidates.append({"solver": name, "noncompulsory_bytes": p.metrics.noncompulsory_bytes,
                           "peak_bytes": p.metrics.peak_bytes, "status": p.solver.status, "bound": p.solver.bound,
                           "seconds": round(p.solver.seconds, 4)})
        if p.solver.bound is not None:
            found.append((p.solver.bound, name))
        say(f"{name}: {p.metrics.noncompulsory_bytes} non-compulsory bytes")
        if best is None or _key(p) < _key(best):
            best = p
    if best is None:
        raise SolverTimeout(f"no plan within the time limit of {time_limit:g} s; raise --time-limit")
    return best, candidates, found


# Of the time left after the baselines, the share `auto` gives the exact solver when dnc follows.
AUTO_EXACT_SHARE = 0.5
# Seconds the lower bound may run past the time limit (its solves overrun a little), and
# its share of the limit (at most BOUND_MAX_SECONDS) when no member searches.
BOUND_GRACE = 1.0
BOUND_SHARE, BOUND_MAX_SECONDS = 0.2, 20.0


def _lower_bound(problem: Problem, b: _bounds.Budgets, chosen: tuple[str, ...], left: float,
                 say: Callable[[str], None]) -> Bound | Beside:
    """`solvers.lower.lower_bound`, once per plan: on graphs exact cannot prove, the bound
    is what the reported gap stands on. When the capacity holds the no-spill peak it is 0
    at once; otherwise it runs in a child process beside the solvers (`Beside`), for the
    time `left` when a member searches (exact, dnc), else for a fifth of it (at most 20 s):
    the baselines alone return in seconds, and the bound should not keep them waiting."""
    order = None if problem.fixed_order else b.order
    if problem.capacity >= b.m_p:
        return lower_bound(problem, 0.0, peak=b.m_p)
    searching = any(m in ("exact", "dnc") for m in chosen)
    seconds = left - BOUND_GRACE if searching else min(BOUND_MAX_SECONDS, BOUND_SHARE * left)
    say("lower bound (beside the solvers)")
    return Beside(problem, max(seconds, 0.5), peak=b.m_p, order=order)


def _relay(name: str, say: Callable[[str], None], found: list[tuple[float, str]], now: Callable[[], float],
           t0: float) -> Callable[[dict[str, Any]], None]:
    """A solver's progress reports (dicts) as the one-line strings of plan()'s callback:
    "dnc: 1,234,560 B non-compulsory (gap 10.9%), 23 s", the gap against the best bound
    known (the members', the lower bound's so far `now()`, the report's own `bound`),
    seconds since plan() began. A report without `noncompulsory_bytes` is shown as its
    keys and values."""
    def report(info: dict[str, Any]) -> None:
        cost = info.get("noncompulsory_bytes")
        if cost is None:
            say(f"{name}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
            return
        bound = min(cost, max([v for v, _ in found] + [now(), info.get("bound") or 0]))
        gap = f" (gap {(cost - bound) / cost:.1%})" if cost else ""
        say(f"{name}: {cost:,} B non-compulsory{gap}, {time.perf_counter() - t0:.0f} s")

    return report


def _proven(best: Plan, found: list[tuple[float, str]], lower: float) -> bool:
    assert best.metrics is not None
    return max([v for v, _ in found] + [lower]) >= best.metrics.noncompulsory_bytes


def _report_bound(best: Plan, found: list[tuple[float, str]]) -> str:
    """Puts the best bound any source found on `best` (status optimal when it meets the
    plan's traffic, so a baseline that ties exact's optimum carries exact's proof);
    returns which source it was."""
    assert best.metrics is not None
    cost = best.metrics.noncompulsory_bytes
    value, how = max(found, key=lambda f: f[0])
    best.solver = SolverInfo.proven(best.solver.name, cost, value, best.solver.seconds)
    return how


def _auto_note(chosen: tuple[str, ...], problem: Problem) -> str:
    """Which solvers `auto` picked for `problem`, and why."""
    size, limit = registry.exact_columns(problem), registry.AUTO_EXACT_MAX_COLUMNS
    if "exact" not in chosen:
        return f"dnc: joint model of about {size:,} columns > {limit:,} (dnc runs the four baselines itself)"
    return f"exact, then dnc unless proven: joint model of about {size:,} columns <= {limit:,}, with the four baselines"


def _key(p: Plan) -> tuple[int, int, int]:
    m = p.metrics
    assert m is not None
    return (m.noncompulsory_bytes, m.recomputed_ops, m.arena_bytes)


def bounds(model: Any, *, target: str | Target = "cosma-int8", inputs: tuple | None = None,
           shapes: dict[str, tuple[int, ...]] | None = None, fuse: bool | None = None,
           decompose_attention: bool | None = None, time_limit: float = 60.0) -> tuple[Graph, _bounds.Budgets]:
    """The lowered graph and its reference budgets (M_R, M_P, M_H, compulsory bytes); `fuse`
    and `decompose_attention` as for `plan`."""
    tgt = resolve_target(target)
    graph = load_graph(model, target=tgt, inputs=inputs, shapes=shapes, fuse=fuse,
                       decompose_attention=decompose_attention)
    return graph, _bounds.budgets(Problem(graph, tgt), time_limit=time_limit)


__all__ = ["plan", "plan_problem", "bounds", "load_graph", "PlannerError"]
