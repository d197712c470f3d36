"""The torch.compile backend: `torch.compile(model, backend="planner", options={...})`.

Registered through the `torch_dynamo_backends` entry point (pyproject.toml), so the name
works after `pip install`. For inference it lowers each graph dynamo captures
(`frontends.fx.lower_graph_module`), plans operator order, arena offsets and, when the
budget demands, spills (`planner.plan` on the `gpu-fp32` target, which sizes every tensor
at its own dtype), and runs the plan with `runtime.torch_executor.TorchExecutor`: one
arena per graph, allocated once. For training it hands the graph to
`frontends.train.compile_train`.

Options (all optional; the dict is never modified):

    memory_budget  bytes (int), a size ("2GiB", "500MB") or "M_R" / "M_H" / "M_P";
                   default "M_P", the least memory with no spill traffic. It covers the
                   activations of ONE captured graph (weights stay where the model keeps
                   them); a graph break makes several graphs, each with this budget, so
                   compile with fullgraph=True to bound the whole model.
    solver         a planner solver or portfolio (`planner solvers`); default "auto" for
                   graphs of up to 100 ops, "baseline" (COSMA's four, fast) above.
    time_limit     seconds for planning one graph; default 30.
    mode           "infer", "train" or "auto" (default): "train" when grad mode is on and
                   an input or parameter requires grad. A training graph and the whole
                   options dict (a copy) go to `frontends.train.compile_train`, which
                   reads its own keys.
    fold_bn        fold eval-mode batch norm into the conv before it (default False: the
                   folded weights are computed once, so later parameter updates would not
                   be seen; unfolded, parameters are read at every call).
    strict         raise instead of falling back to eager on an unsupported graph.

An unsupported graph (dynamic shapes, data-dependent results, an output that no op
computes, ...) runs eagerly after one warning giving the reason; with `strict` it raises.
Bad options and budgets below M_R (`planner.errors.Infeasible`, naming the op that needs
the most and that minimum) always raise. Inference runs without autograd.

Planning is reported: each compiled graph is a `PlannedGraph` (plan, seconds spent
lowering and planning, whether the plan came from the cache), listed by
`compiled_graphs()` and logged on the "planner.dynamo" logger. Plans are cached per
lowered graph (ops, tensors, shapes, dtypes) and options, so recompiling the same graph
for the same shapes skips the solver.
"""
from __future__ import annotations

import logging
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["planner_backend", "PlannedGraph", "compiled_graphs", "clear_cache"]

log = logging.getLogger("planner.dynamo")

_KNOWN = {"memory_budget", "solver", "time_limit", "mode", "fold_bn", "strict"}
_TORCH_KEYS = {"guard_filter_fn", "use_aoti"}  # torch reads these itself
_MODES = ("infer", "train", "auto")
_BIG_GRAPH = 100  # ops; above this the default solver is the fast "baseline" portfolio

_plans: dict[Any, Any] = {}  # (graph key, options) -> Plan
_recent: list[weakref.ref] = []
_warned: set[str] = set()


@dataclass(frozen=True)
class Options:
    """The backend's options, checked."""

    memory_budget: int | str = "M_P"
    solver: str | None = None  # None: chosen by graph size
    time_limit: float = 30.0
    fold_bn: bool = False
    strict: bool = False

    @staticmethod
    def parse(options: dict[str, Any] | None) -> Options:
        """Checks inference options without modifying them; raises BadInput with a one-line reason."""
        from planner.errors import BadInput

        opts = dict(options or {})
        _mode(opts)
        unknown = sorted(set(opts) - _KNOWN - _TORCH_KEYS)
        if unknown:
            raise BadInput(f"unknown option {unknown[0]!r}; the planner backend takes {', '.join(sorted(_KNOWN))}")
        budget = opts.get("memory_budget", "M_P")
        if isinstance(budget, bool) or not isinstance(budget, (int, str)):
            raise BadInput(f"option memory_budget={budget!r}: give bytes, a size such as '2GiB', or M_R / M_H / M_P")
        if isinstance(budget, str) and budget.upper().replace("-", "_") not in ("M_R", "M_H", "M_P"):
            from planner.units import parse_bytes

            budget = parse_bytes(budget)  # raises on a bad unit
        if isinstance(budget, int) and budget <= 0:
            raise BadInput(f"option memory_budget={budget!r} must be positive")
        solver = opts.get("solver")
        if solver is not None:
            from planner import registry

            registry.members(solver)  # raises naming the known solvers
        limit = opts.get("time_limit", 30.0)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
            raise BadInput(f"option time_limit={limit!r} must be a positive number of seconds")
        for flag in ("fold_bn", "strict"):
            if not isinstance(opts.get(flag, False), bool):
                raise BadInput(f"option {flag}={opts[flag]!r} must be True or False")
        return Options(budget, solver, float(limit), opts.get("fold_bn", False), opts.get("strict", False))


def planner_backend(gm: Any, example_inputs: list, *, options: dict[str, Any] | None = None, mode: str | None = None,
                    **kwargs: Any) -> Callable[..., Any]:
    """The backend function torch.compile calls once per captured graph.

    `options` is torch.compile's `options` dict (see the module docstring); `mode` is
    torch.compile's own mode ("reduce-overhead", ...), which the planner does not use.
    Returns a callable taking the graph's inputs: a `PlannedGraph`, the training
    compiler's result, or `gm.forward` after a warning when the graph is unsupported.
    """
    import torch

    from planner.errors import BadInput, UnsupportedModel

    if _wants_training(_mode(options or {}), gm, example_inputs, torch):  # its options are frontends.train's
        try:
            from planner.frontends.train import compile_train
        except ImportError as e:
            return _fallback(gm, f"training graphs need frontends.train ({e})", bool((options or {}).get("strict")))
        return compile_train(gm, example_inputs, dict(options or {}))
    opts = Options.parse(options)
    try:
        return PlannedGraph.compile(gm, example_inputs, opts)
    except (UnsupportedModel, BadInput) as e:  # raised by lowering: the graph, not the options
        return _fallback(gm, str(e), opts.strict)


def _mode(options: dict[str, Any]) -> str:
    from planner.errors import BadInput

    mode = options.get("mode", "auto")
    if mode not in _MODES:
        raise BadInput(f"option mode={mode!r}: use one of {', '.join(_MODES)}")
    return mode


def _wants_training(mode: str, gm: Any, example_inputs: list, torch: Any) -> bool:
    if mode != "auto":
        return mode == "train"
    if not torch.is_grad_enabled():
        return False
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)] + list(gm.parameters())
    return any(x.requires_grad for x in tensors)


def _fallback(gm: Any, reason: str, strict: bool) -> Callable[..., Any]:
    from planner.errors import UnsupportedModel

    if strict:
        raise UnsupportedModel(f"planner backend (strict): {reason}")
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"planner backend: {reason}; running this graph eagerly", RuntimeWarning, stacklevel=3)
    return gm.forward


class PlannedGraph:
    """One captured graph, lowered, planned and ready to run in its arena.

    Attributes worth inspecting: `plan` (planner-plan/1, with `plan.extra["budgets"]`),
    `executor` (its `stats` after a call: arena, transient and output bytes),
    `lowering_seconds`, `planning_seconds` (0 when `cached`), `budget` as given.
    """

    def __init__(self, lowered: Any, plan: Any, executor: Any, input_slots: list[int],
                 weight_slots: dict[str, int], tuple_output: bool, lowering_seconds: float,
                 planning_seconds: float, cached: bool, budget: int | str):
        self.lowered, self.plan, self.executor = lowered, plan, executor
        self.input_slots, self.weight_slots, self.tuple_output = input_slots, weight_slots, tuple_output
        self.lowering_seconds, self.planning_seconds, self.cached = lowering_seconds, planning_seconds, cached
        self.budget = budget

    @staticmethod
    def compile(gm: Any, example_inputs: list, opts: Options) -> PlannedGraph:
        import planner
        from planner.frontends.fx import lower_graph_module
        from planner.ir import get_target
        from planner.runtime.torch_executor import TorchExecutor

        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        params = [k for k, n in enumerate(placeholders) if _is_parameter(n, example_inputs[k])]
        t0 = time.perf_counter()
        low = lower_graph_module(gm, example_inputs, fold_bn=opts.fold_bn, weight_inputs=params,
                                 name=type(gm).__name__)
        lowering = time.perf_counter() - t0
        graph = low.graph
        solver = opts.solver or ("auto" if len(graph.ops) <= _BIG_GRAPH else "baseline")
        key = (_graph_key(graph), opts.memory_budget, solver, opts.time_limit)
        cached = key in _plans
        t0 = time.perf_counter()
        if not cached:
            _plans[key] = planner.plan(graph, opts.memory_budget, target=get_target("gpu-fp32"), solver=solver,
                                       time_limit=opts.time_limit)
        plan = _plans[key]
        planning = time.perf_counter() - t0
        device = next((x.device for x in example_inputs if hasattr(x, "device")), None)
        executor = TorchExecutor(plan, graph, low.weights, device=device)
        slot = {n.name: k for k, n in enumerate(placeholders)}
        out = next(n for n in gm.graph.nodes if n.op == "output")
        compiled = PlannedGraph(low, plan, executor, [slot[i] for i in graph.inputs],
                                {n: slot[n] for n in low.weights if n in slot}, isinstance(out.args[0], (tuple, list)),
                                lowering, planning, cached, opts.memory_budget)
        log.info("planner: graph of %d ops, budget %s -> arena %d B, %d B non-compulsory traffic, solver %s; "
                 "lowered in %.2f s, planned in %.2f s%s", len(graph.ops), opts.memory_budget,
                 executor.stats.arena_bytes, plan.metrics.noncompulsory_bytes, plan.solver.name, lowering, planning,
                 " (cached plan)" if cached else "")
        _recent[:] = [r for r in _recent if r() is not None] + [weakref.ref(compiled)]
        return compiled

    def __call__(self, *args: Any) -> Any:
        inputs = [args[k] for k in self.input_slots]
        values = self.executor.run(*inputs, weights={n: args[k] for n, k in self.weight_slots.items()})
        by_name = dict(zip(self.lowered.graph.outputs, values))
        outputs = [by_name[o] for o in self.lowered.outputs]
        return tuple(outputs) if self.tuple_output else outputs[0]


def _is_parameter(node: Any, value: Any) -> bool:
    """A placeholder dynamo lifted from a module's parameters or buffers (its source says so)."""
    import torch

    if isinstance(value, torch.nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = source.name if source is not None else ""
    return "._parameters[" in name or "._buffers[" in name


def _graph_key(graph: Any) -> tuple:
    """Everything a plan depends on: ops with their tensors, and each tensor's shape, dtype, kind."""
    return (tuple((o.name, o.type, tuple(o.inputs), tuple(o.outputs)) for o in graph.ops),
            tuple((n, t.shape, t.dtype, t.kind) for n, t in graph.tensors.items()),
            tuple(graph.inputs), tuple(graph.outputs))


def compiled_graphs() -> list[PlannedGraph]:
    """The PlannedGraphs still alive in this process, oldest first."""
    return [g for g in (r() for r in _recent) if g is not None]


def clear_cache() -> None:
    """Forgets cached plans (and which fallback reasons were already warned about)."""
    _plans.clear()
    _warned.clear()
