"""The torch.compile backend: `torch.compile(model, backend="planner", options={...})`.

Registered through the `torch_dynamo_backends` entry point (pyproject.toml), so the name
works after `pip install`. For inference it lowers each graph dynamo captures
(`frontends.fx.lower_graph_module`), plans operator order, arena offsets and, when the
budget demands, spills (`planner.plan` on the `gpu-fp32` target, which sizes every tensor
at its own dtype), and runs the plan with `runtime.torch_executor.TorchExecutor`. For
training it hands the graph to `frontends.train.compile_train`.

Options (all optional; the dict is never modified):

    memory_budget  bytes (int), a size ("2GiB", "500MB") or "M_R" / "M_H" / "M_P";
                   default "M_P", the least memory with no spill traffic. Bytes cover all
                   a call allocates: the arena, the largest transient (an op with no out=
                   form computes a fresh result, copied in) and the graph's outputs (the
                   capacity left for the arena assumes both at once; the planned peak
                   replays the plan, so it can be less).
                   M_R / M_H / M_P are the bounds of the arena (outputs live outside it),
                   to which the transient and the outputs add. It applies to ONE captured
                   graph; a graph break makes several graphs, each with this budget, so
                   compile with fullgraph=True to bound the whole model.
    solver         a planner solver or portfolio (`planner solvers`); default "auto" for
                   graphs of up to 100 ops, "baseline" (COSMA's four, fast) above.
    time_limit     seconds for planning one graph; default 30.
    mode           "infer", "train" or "auto" (default). A graph trains only when grad
                   mode is on, an input or parameter requires grad, mode is not "infer"
                   and (for "auto") the module owning the parameters is in training mode.
                   So `torch.compile(model.eval(), backend="planner")(x)` plans inference
                   even without no_grad. A training graph goes to
                   `frontends.train.compile_train` with the options less the keys only
                   this backend reads (fold_bn, max_shapes) and memory_budget defaulting
                   to "M_P"; the training keys (compiler, offload, recompute, target) are
                   accepted and ignored when the graph is inference.
    fold_bn        fold eval-mode batch norm into the conv before it (default False: the
                   folded weights are computed once, so later parameter updates would not
                   be seen; unfolded, parameters are read at every call).
    strict         raise instead of falling back to eager.
    max_shapes     plans kept per captured graph, one per static input shape (default 8):
                   a graph dynamo captured with dynamic shapes is planned again for each
                   new shape it is called with, the least recently used plan is dropped
                   past this many, and all its plans share one arena (grown as needed).

Fallbacks, each after one warning that gives the reason (`strict`: the error instead):
a graph that writes into its inputs or buffers (x.add_(1), batch norm in training mode
updating its running statistics), that returns a view of an input or weight, or that the
frontend cannot lower (data-dependent shapes, ...) runs eagerly, so the caller sees what
eager PyTorch does. Bad options and budgets below M_R (`planner.errors.Infeasible`,
naming the op that needs the most and that minimum) raise their one-line planner error
when the compiled function is called, not as dynamo's BackendCompilerFailed.

How a call uses memory (`runtime.torch_executor`): one arena per captured graph (shared by
its shapes) holds the intermediate tensors; inputs are read where the caller keeps them
and outputs are written straight into the tensors returned, so neither is copied into or
out of the arena; an op with no out= form computes a fresh result that is copied in (the
transient the budget reserves; 1x1 convolutions and eval-mode batch norm are written in
place); the arena shrinks where the rest of the plan needs at most half of it, and when
the plan ends with ops that only write outputs it is released before them (a language
model's logits never sit beside it); the next call takes it back. Kernel workspaces
(oneDNN's weight reorders, im2col buffers) are not planned. On the CPU, spilled tensors'
host buffers are the same RAM: a budget below M_P trades arena bytes for host bytes.

Planning is reported: each planned shape is a `PlannedGraph` (plan, seconds spent lowering
and planning, cache hit, `summary()`: budget, planned peak, moved bytes and what moved,
solver gap), listed by `compiled_graphs()` and logged on the "planner.dynamo" logger at
INFO. Plans are cached per lowered graph (ops, tensors, shapes, dtypes) and options, so
recompiling the same graph for the same shapes skips the solver.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["planner_backend", "PlannedGraph", "PlannedFunction", "side_effect", "compiled_graphs", "clear_cache"]

log = logging.getLogger("planner.dynamo")

_KNOWN = {"memory_budget", "solver", "time_limit", "mode", "fold_bn", "strict", "max_shapes"}
_INFER_ONLY = {"fold_bn", "max_shapes"}  # never passed to compile_train
_TRAIN_ONLY = {"compiler", "offload", "recompute", "target"}  # frontends.train's; ignored by inference
_TORCH_KEYS = {"guard_filter_fn", "use_aoti"}  # torch reads these itself
_MODES = ("infer", "train", "auto")
_BIG_GRAPH = 100  # ops; above this the default solver is the fast "baseline" portfolio

_plans: dict[Any, Any] = {}  # (graph key, options) -> Plan
_recent: list[weakref.ref] = []
_warned: set[str] = set()


@dataclass(frozen=True)
class Options:
    """The backend's inference options, checked."""

    memory_budget: int | str = "M_P"
    solver: str | None = None  # None: chosen by graph size
    time_limit: float = 30.0
    fold_bn: bool = False
    strict: bool = False
    max_shapes: int = 8

    @staticmethod
    def parse(options: dict[str, Any] | None) -> Options:
        """Checks inference options without modifying them; raises BadInput with a one-line reason."""
        from planner.errors import BadInput

        opts = dict(options or {})
        _mode(opts)
        unknown = sorted(set(opts) - _KNOWN - _TRAIN_ONLY - _TORCH_KEYS)
        if unknown:
            raise BadInput(f"unknown option {unknown[0]!r}; the planner backend takes "
                           f"{', '.join(sorted(_KNOWN | _TRAIN_ONLY))}")
        budget = opts.get("memory_budget", "M_P")
        if budget is None:
            budget = "M_P"
        if isinstance(budget, bool) or not isinstance(budget, (int, str)):
            raise BadInput(f"option memory_budget={budget!r}: give bytes, a size such as '2GiB', or M_R / M_H / M_P")
        from planner.units import budget_name, parse_bytes

        if isinstance(budget, str):
            budget = budget_name(budget) or parse_bytes(budget)  # raises on a bad unit
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
        shapes = opts.get("max_shapes", 8)
        if isinstance(shapes, bool) or not isinstance(shapes, int) or shapes < 1:
            raise BadInput(f"option max_shapes={shapes!r} must be a whole number >= 1")
        return Options(budget, solver, float(limit), opts.get("fold_bn", False), opts.get("strict", False), shapes)


def planner_backend(gm: Any, example_inputs: list, *, options: dict[str, Any] | None = None, mode: str | None = None,
                    **kwargs: Any) -> Callable[..., Any]:
    """The backend function torch.compile calls once per captured graph.

    `options` is torch.compile's `options` dict (see the module docstring); `mode` is
    torch.compile's own mode ("reduce-overhead", ...), which the planner does not use.
    Returns a callable taking the graph's inputs: a `PlannedFunction`, the training
    compiler's result, `gm.forward` after a warning when the graph falls back to eager,
    or a callable raising the planner's error (bad options, an infeasible budget).
    """
    from planner.errors import PlannerError

    given = dict(options or {})
    try:
        if _wants_training(_mode(given), gm, example_inputs):
            return _compile_train(gm, example_inputs, given)
        opts = Options.parse(given)
    except PlannerError as e:
        return _Raises(e)
    reason = side_effect(gm)
    if reason is not None:
        return _fallback(gm, reason, opts.strict)
    return PlannedFunction.create(gm, example_inputs, opts)


def _mode(options: dict[str, Any]) -> str:
    from planner.errors import BadInput

    mode = options.get("mode", "auto")
    if mode not in _MODES:
        raise BadInput(f"option mode={mode!r}: use one of {', '.join(_MODES)}")
    return mode


def _wants_training(mode: str, gm: Any, example_inputs: list) -> bool:
    """Whether the graph trains: see `mode` in the module docstring. An eval-mode model
    called with grad on is inference (the plainest call must not need no_grad)."""
    import torch

    if mode == "infer" or not torch.is_grad_enabled():
        return False
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)] + list(gm.parameters())
    if not any(x.requires_grad for x in tensors):
        return False
    if mode == "train":
        return True
    owners = _owning_modules(gm)
    return not owners or any(m.training for m in owners)


def _owning_modules(gm: Any) -> list[Any]:
    """The modules whose parameters and buffers dynamo lifted into `gm`'s placeholders.

    Read from the frame dynamo is compiling (each placeholder's source, e.g.
    L['fn']._modules['0']._parameters['weight'], names its module); empty when the graph
    has no parameters, or when it is not being captured by dynamo (a hand-made graph)."""
    import torch

    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
    except (ImportError, AttributeError):
        return []
    if tx is None:
        return []
    found: dict[int, Any] = {}
    for n in gm.graph.nodes:
        source = getattr(n.meta.get("grapharg"), "source", None) if n.op == "placeholder" else None
        holder = getattr(source, "base", None)
        if getattr(holder, "member", None) not in ("_parameters", "_buffers"):
            continue
        try:
            module = holder.base.get_value({"G": tx.f_globals}, {"L": tx.f_locals}, {})
        except Exception:  # a source dynamo built that does not evaluate in this frame: not ours to read
            continue
        if isinstance(module, torch.nn.Module):
            found[id(module)] = module
    return list(found.values())


def _compile_train(gm: Any, example_inputs: list, given: dict[str, Any]) -> Callable[..., Any]:
    """Hands a training graph to frontends.train.compile_train with its own keys only."""
    from planner.errors import PlannerError

    from planner.frontends.train import compile_train

    train = {k: v for k, v in given.items() if k not in _INFER_ONLY and k not in _TORCH_KEYS}
    if train.get("memory_budget") is None:
        train["memory_budget"] = "M_P"
    try:
        return compile_train(gm, example_inputs, train)
    except PlannerError as e:
        return _Raises(e)


class _Raises:
    """The compiled function of a graph whose options or budget are wrong: every call raises
    the planner's one-line error, so the user reads it rather than dynamo's
    BackendCompilerFailed wrapper and its advice to set TORCHDYNAMO_VERBOSE."""

    def __init__(self, error: BaseException):
        self.error = error

    def __call__(self, *args: Any) -> Any:
        raise self.error.with_traceback(None)


def side_effect(gm: Any) -> str | None:
    """Why running `gm` in an arena would differ from eager, or None.

    The executor runs every op out of place and returns new tensors, so three things eager
    PyTorch does would be lost: an in-place write into a graph input, parameter or buffer
    (x.add_(1), x[0] = 0); batch norm in training mode, which updates its running
    statistics; an output that is an input or weight or a view of one (the caller would
    get a copy where eager gives an alias)."""
    from torch.fx import Node
    from torch.fx.node import map_aggregate

    from planner.frontends.fx_rewrites import written_by

    for n in gm.graph.nodes:  # batch norm first: its counter's add_ would be a less telling reason
        stats = _updated_statistics(gm, n)
        if stats is not None:
            return f"batch norm {n.name!r} runs in training mode and updates its running statistics {stats!r}"
    for n in gm.graph.nodes:
        written = written_by(n)
        if written is not None:
            root = _alias_root(written)
            if root.op in ("placeholder", "get_attr"):
                what = "buffer" if root.op == "get_attr" or _is_parameter(root, None) else "graph input"
                return f"{n.name!r} writes in place into the {what} {root.name!r}"
    out = next(n for n in gm.graph.nodes if n.op == "output")
    flat: list[Any] = []
    map_aggregate(out.args[0], flat.append)
    for k, o in enumerate(flat):
        if isinstance(o, Node):
            root = _alias_root(o)
            if root.op in ("placeholder", "get_attr"):
                return f"output {k} ({o.name!r}) is the graph input {root.name!r} or a view of it, which eager" \
                       " returns as an alias"
    return None


def _alias_root(n: Any) -> Any:
    """The node whose storage `n` may share, following view-like ops back."""
    from torch.fx import Node

    from planner.frontends.fx_rules import ALIASING, canon

    while n.op in ("call_function", "call_method") and canon(n) in ALIASING and n.args \
            and isinstance(n.args[0], Node):
        n = n.args[0]
    return n


def _updated_statistics(gm: Any, n: Any) -> str | None:
    """The running-mean node (or module) a training-mode batch norm writes, else None."""
    import torch

    from planner.frontends.fx_rules import BATCH_NORMS, arg_of, canon

    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        is_bn = isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        return n.target if is_bn and m.training and m.track_running_stats else None
    if n.op != "call_function" or canon(n) not in BATCH_NORMS or "no_training" in canon(n):
        return None
    functional = n.target is torch.nn.functional.batch_norm  # (input, running_mean, running_var, w, b, training)
    stats = arg_of(n, 1 if functional else 3, "running_mean")  # aten / torch: (input, w, b, running_mean, ...)
    training = arg_of(n, 5, "training", False)
    return stats.name if training is True and stats is not None and hasattr(stats, "name") else None


def _fallback(gm: Any, reason: str, strict: bool) -> Callable[..., Any]:
    from planner.errors import UnsupportedModel

    if strict:
        raise UnsupportedModel(f"planner backend (strict): {reason}")
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"planner backend: {reason}; running this graph eagerly", RuntimeWarning, stacklevel=3)
    return gm.forward


class PlannedFunction:
    """What the backend returns for an inference graph: one `PlannedGraph` per static input
    shape, made on first use, at most `max_shapes` kept (least recently used dropped), all
    running in one arena that grows to the largest plan.

    A graph with static shapes is planned when dynamo compiles it, so a budget below M_R
    is found then (and raised at the call); a graph dynamo captured with dynamic sizes
    (torch.compile's automatic dynamic after a second batch size, or dynamic=True) is
    planned at the first call with each concrete shape.
    """

    def __init__(self, gm: Any, example_inputs: list, opts: Options):
        import torch

        self.gm, self.opts = gm, opts
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.params = [k for k, n in enumerate(placeholders) if _is_parameter(n, example_inputs[k])]
        self.dynamic = any(isinstance(x, torch.SymInt) for x in example_inputs) or any(
            _symbolic(n.meta.get("example_value")) for n in placeholders)
        self.graphs: OrderedDict[tuple, PlannedGraph] = OrderedDict()
        self.arena: Any = None
        self.eager: Callable[..., Any] | None = None  # set when the graph fell back

    @staticmethod
    def create(gm: Any, example_inputs: list, opts: Options) -> Callable[..., Any]:
        """The callable for dynamo: planned now for static shapes; `gm.forward` after a
        warning when the graph cannot be lowered; a raiser for an infeasible budget."""
        from planner.errors import BadInput, Infeasible, UnsupportedModel

        fn = PlannedFunction(gm, example_inputs, opts)
        if fn.dynamic:
            return fn
        try:
            fn._plan_for(list(example_inputs))
        except (UnsupportedModel, BadInput) as e:  # raised by lowering: the graph, not the options
            return _fallback(gm, str(e), opts.strict)
        except Infeasible as e:
            return _Raises(e)
        return fn

    def __call__(self, *args: Any) -> Any:
        from planner.errors import BadInput, UnsupportedModel

        if self.eager is not None:
            return self.eager(*args)
        key = _shape_key(args)
        g = self.graphs.get(key)
        if g is None:
            try:
                g = self._plan_for(list(args))
            except (UnsupportedModel, BadInput) as e:
                self.eager = _fallback(self.gm, str(e), self.opts.strict)
                return self.eager(*args)
        else:
            self.graphs.move_to_end(key)
        return g(*args)

    def _plan_for(self, inputs: list) -> PlannedGraph:
        """Lowers and plans `gm` for the shapes of `inputs`, in the shared arena."""
        import torch

        g = PlannedGraph.compile(self.gm, inputs, self.opts, self.params, specialize=self.dynamic)
        need = g.plan.metrics.arena_bytes
        if self.arena is None or self.arena.numel() < need:
            with torch.inference_mode(False):
                self.arena = torch.empty(need, dtype=torch.uint8, device=g.device)
            for other in self.graphs.values():
                other.executor.use_arena(self.arena)
        g.start(self.arena)
        self.graphs[_shape_key(inputs)] = g
        while len(self.graphs) > self.opts.max_shapes:
            self.graphs.popitem(last=False)
        return g


def _symbolic(value: Any) -> bool:
    import torch

    return isinstance(value, torch.SymInt) or (isinstance(value, torch.Tensor) and
                                               not all(isinstance(d, int) for d in value.shape))


def _shape_key(args: Any) -> tuple:
    """What a plan depends on in a call's arguments: each tensor's shape, dtype and device,
    each other argument's value (a size dynamo passes as an int)."""
    import torch

    return tuple((tuple(a.shape), a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args)


class PlannedGraph:
    """One captured graph at one static shape, lowered, planned and ready to run.

    Attributes worth inspecting: `plan` (planner-plan/1 of the arena: graph outputs hold
    token residencies, see `runtime.torch_executor`; `plan.extra["budgets"]` holds the
    arena's M_R/M_P/M_H), `executor` (its `stats` after a call), `transient_bytes` (the
    largest op result computed outside the arena and copied in), `output_bytes`,
    `planned_peak_bytes` (what a call allocates: arena, outputs, a transient),
    `lowering_seconds`, `planning_seconds` (0 when `cached`), `budget` as given;
    `summary()` says it all, including what the plan moved.
    """

    def __init__(self, lowered: Any, plan: Any, outside: set[str], outputs: set[str], transient_bytes: int,
                 input_slots: list[int],
                 weight_slots: dict[str, int], tuple_output: bool, lowering_seconds: float,
                 planning_seconds: float, cached: bool, budget: int | str, device: Any):
        self.lowered, self.plan, self.outside = lowered, plan, outside
        self.transient_bytes = transient_bytes
        self.output_bytes = sum(lowered.graph.tensors[o].nbytes for o in outputs)
        self.input_slots, self.weight_slots, self.tuple_output = input_slots, weight_slots, tuple_output
        self.lowering_seconds, self.planning_seconds, self.cached = lowering_seconds, planning_seconds, cached
        self.budget, self.device = budget, device
        self.executor: Any = None
        self._peak: int | None = None

    @property
    def planned_peak_bytes(self) -> int:
        """Bytes a call allocates at most: the arena, plus at the worst step the outputs made
        so far and that step's transient (`runtime.torch_executor.planned_peak`)."""
        from planner.runtime.torch_executor import planned_peak

        if self._peak is None:
            self._peak = planned_peak(self.plan, self.lowered.graph, self.outside)
        return self._peak

    @staticmethod
    def compile(gm: Any, example_inputs: list, opts: Options, params: list[int], *,
                specialize: bool = False) -> PlannedGraph:
        """Lowers `gm` at the shapes of `example_inputs` and plans it (no arena yet: `start`)."""
        import planner
        from planner.errors import Infeasible
        from planner.frontends.fx import lower_graph_module
        from planner.ir import get_target
        from planner.runtime.torch_executor import transient_reserve

        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        t0 = time.perf_counter()
        low = lower_graph_module(gm, example_inputs, fold_bn=opts.fold_bn, weight_inputs=params,
                                 name=type(gm).__name__, specialize=specialize)
        lowering = time.perf_counter() - t0
        graph = low.graph
        outputs = {graph.base(o) for o in graph.outputs}
        outside = outputs | set(graph.inputs)  # read and written where the caller has them, never copied
        arena_graph = _arena_graph(graph, outside)
        transient = transient_reserve(graph, outside)
        around = transient + sum(graph.tensors[o].nbytes for o in outputs)  # what the arena's capacity leaves out
        budget = opts.memory_budget
        capacity = budget - around if isinstance(budget, int) else budget
        solver = opts.solver or ("auto" if len(graph.ops) <= _BIG_GRAPH else "baseline")
        key = (_graph_key(arena_graph), capacity, solver, opts.time_limit)
        cached = key in _plans
        t0 = time.perf_counter()
        if not cached:
            if isinstance(capacity, int) and capacity <= 0:
                raise _infeasible(budget, around, arena_graph)
            try:
                _plans[key] = planner.plan(arena_graph, capacity, target=get_target("gpu-fp32"), solver=solver,
                                           time_limit=opts.time_limit)
            except Infeasible:
                raise _infeasible(budget, around, arena_graph) from None
        plan = _plans[key]
        planning = time.perf_counter() - t0
        device = next((x.device for x in example_inputs if hasattr(x, "device")), None)
        slot = {n.name: k for k, n in enumerate(placeholders)}
        out = next(n for n in gm.graph.nodes if n.op == "output")
        compiled = PlannedGraph(low, plan, outside, outputs, transient, [slot[i] for i in graph.inputs],
                                {n: slot[n] for n in low.weights if n in slot}, isinstance(out.args[0], (tuple, list)),
                                lowering, planning, cached, budget, device)
        if log.isEnabledFor(logging.INFO):  # describe() replays the plan: only when someone reads it
            log.info("planner: %s", compiled.describe())
        _recent[:] = [r for r in _recent if r() is not None] + [weakref.ref(compiled)]
        return compiled

    def start(self, arena: Any) -> None:
        """Makes the executor, running in (the first bytes of) `arena`."""
        from planner.runtime.torch_executor import TorchExecutor

        self.executor = TorchExecutor(self.plan, self.lowered.graph, self.lowered.weights, device=self.device,
                                      outside=self.outside, arena=arena)

    def __call__(self, *args: Any) -> Any:
        inputs = [args[k] for k in self.input_slots]
        values = self.executor.run(*inputs, weights={n: args[k] for n, k in self.weight_slots.items()})
        by_name = dict(zip(self.lowered.graph.outputs, values))
        outputs = [by_name[o] for o in self.lowered.outputs]
        return tuple(outputs) if self.tuple_output else outputs[0]

    def summary(self) -> dict[str, Any]:
        """The plan in the numbers a user budgets with: what the budget was, what a call
        allocates, and what the plan moves to host memory (or recomputes) to fit it."""
        p, g = self.plan, self.lowered.graph
        moved: dict[str, int] = {}
        for s in p.steps:
            if s.kind in ("load", "store") and s.tensor in g.tensors and g.tensors[s.tensor].kind == "activation":
                moved[s.tensor] = moved.get(s.tensor, 0) + g.tensors[s.tensor].nbytes  # type: ignore[index]
        computes: dict[str, int] = {}
        for s in p.steps:
            if s.kind == "compute":
                computes[s.op] = computes.get(s.op, 0) + 1  # type: ignore[index]
        return {"graph": g.name, "inputs": {n: list(g.tensors[n].shape) for n in g.inputs}, "ops": len(g.ops),
                "budget": self.budget, "arena_capacity_bytes": p.target.capacity,
                "budgets": dict(p.extra.get("budgets", {})), "planned_peak_bytes": self.planned_peak_bytes,
                "arena_bytes": p.metrics.arena_bytes, "transient_bytes": self.transient_bytes,
                "output_bytes": self.output_bytes, "moved_bytes": p.metrics.noncompulsory_bytes,
                "moved": moved, "recomputed": sorted(o for o, k in computes.items() if k > 1),
                "solver": p.solver.name, "status": p.solver.status, "gap": p.solver.gap,
                "lowering_seconds": round(self.lowering_seconds, 3), "planning_seconds": round(self.planning_seconds, 3),
                "cached": self.cached}

    def describe(self) -> str:
        """`summary()` in one line, for the log."""
        s = self.summary()
        mb = (lambda b: f"{b / 1e6:.2f} MB")
        shapes = ", ".join(f"{n} {tuple(v)}" for n, v in s["inputs"].items())
        moved = f"moved {mb(s['moved_bytes'])}" + (f" ({', '.join(sorted(s['moved']))})" if s["moved"] else "")
        gap = ", no bound" if s["gap"] is None else f", gap {100 * s['gap']:.1f}%"
        return (f"{s['graph']} [{shapes}]: {s['ops']} ops, budget {s['budget']} -> planned peak "
                f"{mb(s['planned_peak_bytes'])} (arena {mb(s['arena_bytes'])}, largest transient {mb(s['transient_bytes'])},"
                f" outputs {mb(s['output_bytes'])}); {moved}"
                + (f", recomputed {', '.join(s['recomputed'])}" if s["recomputed"] else "")
                + f"; solver {s['solver']} ({s['status']}{gap}); lowered in {s['lowering_seconds']:.2f} s, "
                f"planned in {s['planning_seconds']:.2f} s" + (" (cached plan)" if s["cached"] else ""))


def _arena_graph(graph: Any, outside: set[str]) -> Any:
    """`graph` as the arena sees it: each graph input and output takes a token of one byte
    (its bytes are the caller's, or allocated by the run), which still orders its readers."""
    tensors = {n: dataclasses.replace(t, nbytes=1) if n in outside else t for n, t in graph.tensors.items()}
    return dataclasses.replace(graph, tensors=tensors)


def _infeasible(budget: int | str, around: int, arena_graph: Any) -> Any:
    """The arena's Infeasible restated for the whole call: the minimum includes the outputs
    and the transient that the arena's capacity left out, in one line."""
    from planner.bounds import m_r
    from planner.errors import Infeasible
    from planner.ir import get_target
    from planner.problem import Problem

    need, op = m_r(Problem(arena_graph, get_target("gpu-fp32")))
    minimum = need + around
    kind = arena_graph.op(op).type if op else "?"
    given = f"memory_budget {budget:,} B" if isinstance(budget, int) else f"memory_budget {budget}"
    return Infeasible(f"planner: {given} is below M_R = {minimum:,} B for this graph, set by op {op!r} ({kind}): "
                      f"{need:,} B resident at once, plus {around:,} B of outputs and transient outside the arena",
                      op=op, minimum=minimum)


def _is_parameter(node: Any, value: Any) -> bool:
    """A placeholder dynamo lifted from a module's parameters or buffers (its source says so)."""
    import torch

    if isinstance(value, torch.nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    name = source.name if source is not None else ""
    return "._parameters[" in name or "._buffers[" in name


def _graph_key(graph: Any) -> tuple:
    """Everything a plan depends on: ops with their tensors, and each tensor's shape, dtype, kind, bytes."""
    return (tuple((o.name, o.type, tuple(o.inputs), tuple(o.outputs)) for o in graph.ops),
            tuple((n, t.shape, t.dtype, t.kind, t.nbytes) for n, t in graph.tensors.items()),
            tuple(graph.inputs), tuple(graph.outputs))


def compiled_graphs() -> list[PlannedGraph]:
    """The PlannedGraphs (one per graph and shape) still alive in this process, oldest first."""
    return [g for g in (r() for r in _recent) if g is not None]


def clear_cache() -> None:
    """Forgets cached plans (and which fallback reasons were already warned about)."""
    _plans.clear()
    _warned.clear()
