"""Runs a plan of an fx-lowered model with PyTorch, in one arena of the plan's size.

The planned version of `frontends.fx.run_graph`. At construction the executor allocates
one uint8 arena of the plan's extent (the highest `offset + nbytes` of any residency; at
most the budget) and, for every activation the plan spills, one host buffer (pinned on
CUDA). Every tensor the plan makes resident is a typed view of the arena at its planned
offset. Each run then replays the steps:

- load: copy the tensor's slow copy (the caller's input, a tracked weight, or the host
  buffer a store filled) into its view;
- compute: call the op with its inputs' views (untracked weights come from `weights`)
  and make it write into its outputs' views: single-node ops whose callable has an `out=`
  form (aten `.out` overloads, torch functions taking `out=`) write in place; the others
  compute into a fresh tensor that is copied into the view. Those fresh results are the
  executor's only transient allocations; `Stats.transient_peak_bytes` counts them (one
  op's outputs at a time; kernel workspaces such as cuDNN's are not visible here);
- store: copy the view to its slow copy (a graph output goes to a fresh tensor that the
  run returns: outputs outlive the run, so they cannot live in the arena); storing an
  input or a weight, whose slow copy is already valid, moves nothing;
- tensors named in `outside` (graph inputs and outputs, as `frontends.dynamo` plans them)
  never enter the arena: the plan gives each a token residency (any size) that orders its
  readers. An input is read where the caller keeps it; an output is allocated by the run
  when its producer computes, which writes into it (out=) or hands over its fresh result.
  Loads and stores of them move nothing: nothing is copied into or out of the arena, and
  their bytes exist once;
- free: drop the name's mapping; its bytes are the next tenant's.

A recompute is a second compute step: the op simply runs again.

Releasing the arena early: when the plan ends with steps that only read the arena and
write outputs outside it (a language model's logits from its last hidden state), the run
copies the few arena tensors those steps still read, frees the arena's storage
(`untyped_storage().resize_(0)`, the views stay valid objects), and the next run
reallocates it. It is done only when it lowers the run's peak (`planned_peak`): then the
big last outputs never coexist with the whole arena, as in eager PyTorch. Likewise the
arena shrinks in place (`resize_` to the highest byte any later residency reaches) where
that at least halves it and saves 256 KiB: a CNN's late layers, whose tensors are small,
then run beside a small arena, and kernel workspaces there (oneDNN reorders weights of
several MiB) do not sit on top of the early layers' bytes.

On CUDA, computes run on the current stream and loads and stores on a side stream.
Events order them by bytes, not by step: a step waits only for the steps of the other
stream that last touched the bytes it writes (or wrote the tensor it reads). A load that
reuses bytes nothing recent touched therefore starts at once and runs while earlier ops
compute: the next loads are prefetched without any lookahead in Python, because the host
issues work ahead of the GPU. On the CPU everything is synchronous and the ordering is a
no-op: the same loop runs, which is how the tests cover it.

    ex = TorchExecutor(plan, lowered.graph, lowered.weights)
    outputs = ex.run(x)            # graph outputs, in graph.outputs order
    ex.stats.transient_peak_bytes  # what ran outside the arena

`transient_reserve(graph, outside)` predicts that transient before planning (the ops whose
callable has no out= form), so a caller can take it out of the budget;
`planned_peak(plan, graph, outside)` is what a run of the plan allocates at most.
"""
from __future__ import annotations

import contextlib
import functools
import operator
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence

import torch

from torch.fx.node import map_aggregate

from planner.frontends.fx_rules import Ref, run_steps
from planner.errors import BadInput
from planner.ir import Graph, Op
from planner.plan import Plan

__all__ = ["TorchExecutor", "Stats", "transient_reserve", "planned_peak"]

# Python operators and functional forms whose out= twin is a torch function.
_OUT_TWINS: dict[Any, Callable[..., Any]] = {operator.add: torch.add, operator.sub: torch.sub,
                                             operator.mul: torch.mul, operator.truediv: torch.div,
                                             operator.matmul: torch.matmul}


@dataclass
class Stats:
    """What the executor allocated and moved; byte counts are real tensor bytes."""

    arena_bytes: int  # the one arena, allocated once at construction
    host_bytes: int  # buffers for spilled activations (pinned on CUDA), allocated once
    output_bytes: int = 0  # the tensors a run returns, fresh each run (copied out, or `outside` the arena)
    transient_peak_bytes: int = 0  # largest set of op results computed outside the arena, then copied in
    load_bytes: int = 0
    store_bytes: int = 0
    computes: int = 0
    recomputes: int = 0
    direct_ops: set[str] = field(default_factory=set)  # ops that wrote into their views (out=)
    copied_ops: set[str] = field(default_factory=set)  # ops whose results were copied in


@dataclass
class _Step:
    kind: str
    name: str  # tensor or op
    index: int  # position in plan.steps, for error messages
    views: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # written tensors and their views


class TorchExecutor:
    """Executes `plan` for `graph` (from `frontends.fx`, every op has `fn`).

    Parameters
    ----------
    plan : a plan of `graph` (validate it with `runtime.simulator.simulate` first; the
        executor trusts its offsets and only checks names and sizes).
    graph : the lowered graph.
    weights : weight name -> tensor on `device` (e.g. `Lowered.weights`).
    device : where the arena lives; default: the device of the first weight, else the CPU.
    outside : graph inputs and outputs (bases) the plan gives token residencies: inputs are
        read in place, outputs allocated per run and written in place (module docstring).
    arena : a uint8 buffer on `device` to run in (its first bytes), shared by several
        executors that never run at once; default: a new one of the plan's extent.

    Raises
    ------
    BadInput : the plan names a tensor or op the graph lacks, gives a tensor fewer bytes
        than its dtype needs (a plan made for another dtype size), or an op has no `fn`.
    """

    def __init__(self, plan: Plan, graph: Graph, weights: dict[str, torch.Tensor],
                 device: torch.device | str | None = None, outside: Collection[str] = (),
                 arena: torch.Tensor | None = None):
        self.plan, self.graph, self.weights = plan, graph, weights
        self.outside = set(outside)
        first = next(iter(weights.values()), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None
                                                                       else torch.device("cpu"))
        self.tracked = {t.name: t.nbytes for t in plan.tensors}
        self._check()
        self.extent = self._extent()
        with torch.inference_mode(False):  # ordinary tensors, writable in and out of inference mode
            if arena is None:
                arena = torch.empty(self.extent, dtype=torch.uint8, device=self.device)
            self._host = {n: self._host_buffer(n) for n in self._spilled()}
        self._writers = {op.name: _Writer(op, graph) for op in graph.ops}
        self._order: _Ordering | _NoOrdering = _Ordering(CudaLanes(self.device)) \
            if self.device.type == "cuda" else _NoOrdering()
        self.stats = Stats(self.extent, sum(b.numel() * b.element_size() for b in self._host.values()))
        self.release = _release(plan, graph, self.outside)  # None: the arena is held for the whole run
        self.shrinks = _shrinks(plan, graph, self.outside, self.release)  # where the arena gets smaller, in order
        self.use_arena(arena)

    def use_arena(self, arena: torch.Tensor) -> None:
        """Runs in `arena` from now on (a shared buffer that grew); remakes the views."""
        if arena.dtype != torch.uint8 or arena.numel() < self.extent or arena.device != self.device:
            raise BadInput(f"an arena of {arena.numel()} {arena.dtype} on {arena.device} cannot hold this plan's"
                           f" {self.extent} bytes on {self.device}")
        self.arena = arena
        self._steps = self._compile_steps()

    def _claim_arena(self) -> None:
        """Gives the arena back its bytes if an earlier run released them."""
        storage = self.arena.untyped_storage()
        if storage.nbytes() < self.arena.numel():
            storage.resize_(self.arena.numel())

    def _shrink_arena(self, size: int) -> None:
        """Keeps the arena's first `size` bytes (all that later steps use): the storage is
        reallocated smaller, its live bytes copied, and the views follow it."""
        self._order.end()  # CUDA: both lanes' work on the old bytes is done,
        self.arena.untyped_storage().resize_(size)
        self._order.begin()  # and the ordering starts afresh on the new ones

    def _release_arena(self, resident: dict[str, torch.Tensor], keep: list[str]) -> None:
        """Copies out what the rest of the run reads from the arena, then frees its storage."""
        self._order.end()  # CUDA: the copy lane's work is done before the bytes go back
        for name in keep:
            resident[name] = resident[name].clone()
        self.arena.untyped_storage().resize_(0)

    # set-up ---------------------------------------------------------------------------------
    def _check(self) -> None:
        g = self.graph
        ends = {g.base(o) for o in g.outputs} | set(g.inputs)
        if not self.outside <= ends:
            raise BadInput(f"outside: {sorted(self.outside - ends)[0]!r} is not a graph input or output")
        for name, planned in self.tracked.items():
            t = g.tensors.get(name)
            if t is None:
                raise BadInput(f"the plan names tensor {name!r}, which graph {g.name!r} lacks")
            if planned < t.nbytes and name not in self.outside:
                raise BadInput(f"the plan gives {name!r} {planned} B but its {t.dtype} values need {t.nbytes} B;"
                               " plan with a target that sizes tensors at their dtype (gpu-fp32)")
        for s in self.plan.steps:
            if s.kind == "compute" and (s.op not in g._ops_by_name() or g.op(s.op).fn is None):
                raise BadInput(f"the plan computes op {s.op!r}, which graph {g.name!r} lacks or cannot run")
        for name, t in g.tensors.items():
            if name not in self.tracked and t.kind == "weight" and name not in self.weights:
                raise BadInput(f"weight {name!r} has no value; pass Lowered.weights")

    def _extent(self) -> int:
        """Bytes the plan's residencies reach: the arena's size."""
        top = 0
        for s in self.plan.steps:
            if s.kind == "load":
                top = max(top, s.offset + self.tracked[s.tensor])  # type: ignore[operator,index]
            elif s.kind == "compute":
                top = max([top] + [off + self.tracked[t] for t, off in (s.offsets or {}).items()])
        if top > self.plan.target.capacity:
            raise BadInput(f"the plan reaches byte {top}, past its capacity {self.plan.target.capacity}")
        return top

    def _spilled(self) -> list[str]:
        """Activations the plan stores that are not graph outputs: they need a host buffer."""
        outs = {self.graph.base(o) for o in self.graph.outputs}
        return list(dict.fromkeys(s.tensor for s in self.plan.steps if s.kind == "store" and s.tensor not in outs
                                  and self.graph.tensors[s.tensor].kind == "activation"))  # type: ignore[index]

    def _host_buffer(self, name: str) -> torch.Tensor:
        t = self.graph.tensors[name]
        pin = self.device.type == "cuda"
        return torch.empty(t.shape, dtype=_dtype(t.dtype), device="cpu", pin_memory=pin)

    def _view(self, name: str, offset: int) -> torch.Tensor | None:
        """`name`'s typed view of the arena at `offset`; None for a tensor `outside` the arena."""
        if name in self.outside:
            return None
        t = self.graph.tensors[name]
        dtype = _dtype(t.dtype)
        if offset % dtype.itemsize:
            raise BadInput(f"the plan puts {name!r} at offset {offset}, not a multiple of its {t.dtype} size")
        return self.arena[offset:offset + t.nbytes].view(dtype).view(t.shape)

    def _compile_steps(self) -> list[_Step]:
        """The plan's steps with their arena views made once, so a run only copies and calls."""
        out = []
        for k, s in enumerate(self.plan.steps):
            if s.kind == "compute":
                op = self.graph.op(s.op)  # type: ignore[arg-type]
                offsets = s.offsets or {}
                missing = [o for o in op.outputs if o in self.tracked and o not in offsets]
                if missing:
                    raise BadInput(f"plan step {k}: compute {op.name!r} gives no offset to {missing[0]!r}")
                out.append(_Step("compute", op.name, k, [(o, self._view(o, offsets[o])) for o in op.outputs]))
            elif s.kind == "load":
                out.append(_Step("load", s.tensor, k, [(s.tensor, self._view(s.tensor, s.offset))]))  # type: ignore
            else:
                out.append(_Step(s.kind, s.tensor, k))  # type: ignore[arg-type]
        return out

    # a run ----------------------------------------------------------------------------------
    def run(self, *inputs: torch.Tensor, weights: dict[str, torch.Tensor] | None = None,
            check_arena: bool = False) -> list[torch.Tensor]:
        """Runs the plan on `inputs` (in `graph.inputs` order); returns `graph.outputs`' values.

        `weights` overrides weight values for this run only (same shapes), e.g. the
        parameters torch.compile passes at each call. `check_arena` verifies after every
        step that each resident tensor lies inside the arena (tests). Runs without autograd."""
        g = self.graph
        if len(inputs) != len(g.inputs):
            raise BadInput(f"{g.name} takes {len(g.inputs)} inputs, got {len(inputs)}")
        for name, x in zip(g.inputs, inputs):
            t = g.tensors[name]
            if tuple(x.shape) != t.shape or _dtype(t.dtype) != x.dtype:
                raise BadInput(f"input {name!r} is {tuple(x.shape)} {x.dtype}; the plan is for {t.shape} {t.dtype}")
        values = {**self.weights, **(weights or {})}
        st = self.stats
        st.load_bytes = st.store_bytes = st.computes = st.recomputes = st.transient_peak_bytes = 0
        with torch.no_grad():
            outputs = {o: torch.empty(g.tensors[o].shape, dtype=_dtype(g.tensors[o].dtype), device=self.device)
                       for o in {g.base(o) for o in g.outputs} - self.outside}  # before the ordering: see _Ordering
            fresh: dict[str, torch.Tensor] = {}  # outputs outside the arena, as their producers make them
            self._claim_arena()
            self._order.begin()
            slow: dict[str, torch.Tensor] = {**values, **dict(zip(g.inputs, inputs)), **self._host}
            resident: dict[str, torch.Tensor] = {}
            done: set[str] = set()
            released = False
            shrinks = iter(self.shrinks)
            shrink = next(shrinks, None)
            for k, step in enumerate(self._steps):
                if shrink is not None and k == shrink.step:
                    self._shrink_arena(shrink.size)
                    shrink = next(shrinks, None)
                if self.release is not None and k == self.release.start:
                    self._release_arena(resident, self.release.keep)
                    released = True
                if step.kind == "compute":
                    self._compute(step, resident, values, done, fresh)
                elif step.name in self.outside:  # its one copy is the caller's input, or where its producer put it
                    if step.kind == "load":
                        resident[step.name] = fresh[step.name] if step.name in fresh else slow[step.name]
                    elif step.kind == "free":
                        resident.pop(step.name, None)
                elif step.kind == "load":
                    self._load(step, resident, slow)
                elif step.kind == "store" and g.tensors[step.name].kind not in ("input", "weight"):
                    self._store(step, resident, outputs.get(step.name, self._host.get(step.name)), slow)
                elif step.kind == "free":
                    self._order.free(step.name)
                    resident.pop(step.name, None)
                if check_arena and not released:
                    self._check_in_arena(step, resident)
            self._order.end()
        outputs.update(fresh)
        st.output_bytes = sum(v.numel() * v.element_size() for v in outputs.values())
        return [outputs[o] if o not in g.views else outputs[g.base(o)].reshape(g.views[o].shape) for o in g.outputs]

    def _check_in_arena(self, step: _Step, resident: dict[str, torch.Tensor]) -> None:
        lo, hi = self.arena.data_ptr(), self.arena.data_ptr() + self.arena.numel()
        for name, v in resident.items():
            start = v.data_ptr()
            if not (lo <= start and start + v.numel() * v.element_size() <= hi):
                raise RuntimeError(f"after plan step {step.index}: {name!r} is resident outside the arena")

    def _compute(self, step: _Step, resident: dict[str, torch.Tensor], values: dict[str, torch.Tensor],
                 done: set[str], fresh: dict[str, torch.Tensor]) -> None:
        op = self.graph.op(step.name)
        try:
            args = [resident[t] if t in self.tracked else values[t] for t in op.inputs]
        except KeyError as e:
            raise BadInput(f"plan step {step.index}: {op.name!r} reads {e.args[0]!r}, which is not resident") from None
        tracked_in = [t for t in op.inputs if t in self.tracked]
        writer = self._writers[op.name]
        views = [v if v is not None or writer.out_call is None else self._fresh(n) for n, v in step.views]
        self._order.before("compute", tracked_in, [(n, v) for (n, _), v in zip(step.views, views) if v is not None])
        transient, results = writer(args, views, self.arena)
        written = list(zip([n for n, _ in step.views], results))
        self._order.after("compute", tracked_in, [(n, v) for n, v in written if n not in self.outside])
        fresh.update((n, v) for n, v in written if n in self.outside)
        st = self.stats
        st.transient_peak_bytes = max(st.transient_peak_bytes, transient)
        (st.direct_ops if self._writers[op.name].direct else st.copied_ops).add(op.name)
        st.computes += 1
        st.recomputes += op.name in done
        done.add(op.name)
        resident.update(written)

    def _fresh(self, name: str) -> torch.Tensor:
        """A new tensor for an output `outside` the arena, which its producer writes into."""
        t = self.graph.tensors[name]
        return torch.empty(t.shape, dtype=_dtype(t.dtype), device=self.device)

    def _load(self, step: _Step, resident: dict[str, torch.Tensor], slow: dict[str, torch.Tensor]) -> None:
        name, view = step.views[0]
        src = slow.get(name)
        if src is None:
            raise BadInput(f"plan step {step.index}: load of {name!r}, which has no slow copy")
        self._order.before("copy", [], step.views)
        with self._order.on("copy"):
            view.copy_(src.reshape(view.shape), non_blocking=True)
        self._order.after("copy", [], step.views)
        resident[name] = view
        self.stats.load_bytes += view.numel() * view.element_size()

    def _store(self, step: _Step, resident: dict[str, torch.Tensor], dst: torch.Tensor | None,
               slow: dict[str, torch.Tensor]) -> None:
        src = resident.get(step.name)
        if src is None or dst is None:
            raise BadInput(f"plan step {step.index}: store of {step.name!r}, which is not resident")
        self._order.before("copy", [step.name], [])
        with self._order.on("copy"):
            dst.copy_(src, non_blocking=True)
        self._order.after("copy", [step.name], [])
        slow[step.name] = dst
        self.stats.store_bytes += src.numel() * src.element_size()


class _Writer:
    """Runs one op so that its outputs land in given views.

    A single-node, single-output op whose callable has an out= form (an aten `.out`
    overload, a torch function taking `out=`, or the torch twin of a Python operator) is
    tried once with `out=view`; if that raises, or the result is not the view, the op
    falls back for good to computing a fresh result and copying it in. Fused groups and
    multi-output ops always take the copy path. A view given as None (an output outside
    the arena) takes the fresh result itself, copied only when it shares an input's bytes."""

    def __init__(self, op: Op, graph: Graph):
        self.op = op
        self.out_call = _out_form(op, graph)
        self.direct = False  # the last call wrote in place

    def __call__(self, args: list[torch.Tensor], views: list[torch.Tensor | None],
                 arena: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
        """Runs the op into `views`; returns the bytes it computed outside the arena that were
        copied in (the transient), and the tensors now holding its outputs."""
        if self.out_call is not None and views[0] is not None:
            fn, call_args, call_kwargs = self.out_call
            try:
                result = fn(*_fill(call_args, args), **dict(zip(call_kwargs, _fill(list(call_kwargs.values()), args))),
                            out=views[0])
            except (TypeError, RuntimeError, NotImplementedError):
                result = None
            if isinstance(result, torch.Tensor) and result.data_ptr() == views[0].data_ptr() \
                    and result.shape == views[0].shape:
                self.direct = True
                return 0, views
            self.out_call = None  # never again: compute and copy
        self.direct = False
        results = self.op.fn(*args)  # type: ignore[misc]
        lo, hi = arena.data_ptr(), arena.data_ptr() + arena.numel()
        shared = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        transient, held = 0, []
        for view, r in zip(views, results):
            if view is None:  # outside the arena: the result is the output, unless it is a view of an input
                held.append(r.clone() if r.untyped_storage().data_ptr() in shared else r)
                continue
            if not lo <= r.data_ptr() < hi:  # a result sharing arena bytes (a transpose of an input) is no allocation
                transient += r.numel() * r.element_size()
            view.copy_(r.reshape(view.shape) if r.shape != view.shape else r)
            held.append(view)
        return transient, held


def _out_form(op: Op, graph: Graph) -> tuple[Callable[..., Any], tuple, dict] | None:
    """(callable taking out=, args, kwargs, where each op input goes) for a single-node op, else None."""
    fn = op.fn
    if not (isinstance(fn, functools.partial) and fn.func is run_steps) or len(op.outputs) != 1:
        return None
    steps, outs = fn.args
    if len(steps) != 1 or outs != [0]:
        return None
    target, (args, kwargs) = steps[0]
    pointwise = _pointwise_conv(op, graph, target, args, kwargs)
    if pointwise is not None:
        return _conv1x1, pointwise, {}
    norm = _eval_batch_norm_args(target, args, kwargs)
    if norm is not None:
        return _eval_batch_norm, norm, {}
    if isinstance(target, torch._ops.OpOverload):
        target = getattr(target.overloadpacket, "out", None)
    else:
        target = _OUT_TWINS.get(target, target)
        if not isinstance(target, types.BuiltinFunctionType):  # a Tensor method or a Python function (F.relu)
            name = getattr(target, "name", getattr(target, "__name__", ""))  # its builtin twin of the same name
            target = getattr(torch._C._nn, name, None) or getattr(torch, name, None)
            if kwargs.get("inplace", True) is False:
                kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        if not _takes_out(target):
            return None
    if target is None or not callable(target) or "out" in kwargs:
        return None
    return target, args, kwargs


# Ops whose result is a view of their input: copying it into the arena allocates nothing.
_VIEW_OPS = {"transpose", "permute", "t", "expand", "expand_as", "select", "slice", "narrow", "unbind", "split",
             "split_with_sizes", "chunk", "view", "view_as", "unflatten", "squeeze", "unsqueeze", "alias", "detach",
             "diagonal", "movedim", "swapaxes"}


_CONV2D = {torch.conv2d, torch.nn.functional.conv2d, torch.ops.aten.conv2d.default}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _pointwise_conv(op: Op, graph: Graph, target: Any, args: tuple, kwargs: dict) -> list | None:
    """[input, weight, bias, stride] when `target(*args, **kwargs)` is a 2-D convolution with
    a 1x1 kernel, no padding, one group, on a 4-D input: a matrix product per image, which
    `_conv1x1` writes into the arena. CPU convolutions have no out= form and a 1x1 one
    allocates a weight-sized workspace besides its result (ResNet-50's 8 MiB); this way it
    needs neither (a strided one copies one subsampled image at a time)."""
    if target not in _CONV2D:
        return None
    given = dict(zip(_CONV_ARGS, args)) | kwargs
    x, w = given.get("input"), given.get("weight")
    if not (isinstance(x, Ref) and isinstance(w, Ref) and not x.step and not w.step) or \
            set(given) - set(_CONV_ARGS):
        return None
    x_shape = x.shape or graph.tensors[op.inputs[x.index]].shape
    w_shape = w.shape or graph.tensors[op.inputs[w.index]].shape
    one = (lambda v, unit: v in (unit, (unit, unit), [unit, unit]))
    if len(x_shape) != 4 or len(w_shape) != 4 or tuple(w_shape[2:]) != (1, 1) or given.get("groups", 1) != 1 or \
            not (one(given.get("padding", 0), 0) or given["padding"] == "valid"):
        return None
    stride = given.get("stride", 1)
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return [x, w, given.get("bias"), stride] if len(stride) == 2 and all(isinstance(v, int) for v in stride) else None


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], *,
             out: torch.Tensor) -> torch.Tensor:
    """conv2d with a 1x1 kernel and no padding into `out`: weight @ image, per image."""
    w = weight.reshape(weight.shape[0], -1)
    if stride != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    for i in range(x.shape[0]):
        torch.mm(w, x[i].reshape(w.shape[1], -1), out=out[i].view(w.shape[0], -1))
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1))
    return out


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


def _eval_batch_norm_args(target: Any, args: tuple, kwargs: dict) -> list | None:
    """[input, mean, var, weight, bias, eps] for F.batch_norm in eval mode (training a
    constant False, statistics given), which `_eval_batch_norm` writes into the arena:
    torch's batch norm has no out= form, so it would take the copy path."""
    if target is not torch.nn.functional.batch_norm:
        return None
    given = dict(zip(_BN_ARGS, args)) | kwargs
    if set(given) - set(_BN_ARGS) or given.get("training", False) is not False or \
            given.get("running_mean") is None or given.get("running_var") is None:
        return None
    return [given["input"], given["running_mean"], given["running_var"], given.get("weight"), given.get("bias"),
            given.get("eps", 1e-5)]


def _eval_batch_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
                     bias: torch.Tensor | None, eps: float, *, out: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm into `out`: x * scale + shift, with per-channel scale and shift
    made from the statistics at each call (so later updates to them are seen)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    torch.mul(x, scale.view(shape), out=out)
    return out.add_(shift.view(shape))


def _transient(op: Op, graph: Graph, outside: set[str]) -> int:
    """Bytes running `op` allocates besides the arena and its outputs outside it: its arena
    outputs when it computes a fresh result that is copied in (no out= form, not a view of
    its input); one subsampled image for a strided 1x1 convolution."""
    form = _out_form(op, graph)
    if form is None:
        copied = op.type.rsplit(".", 1)[-1].rstrip("_") not in _VIEW_OPS
        return sum(graph.tensors[o].nbytes for o in op.outputs if o not in outside) if copied else 0
    if form[0] is _conv1x1 and form[1][3] != (1, 1):
        _, _, h, w = graph.tensors[op.outputs[0]].shape
        x = graph.tensors[op.inputs[form[1][0].index]]
        return x.nbytes // x.numel * x.shape[1] * h * w
    return 0


def _takes_out(fn: Any) -> bool:
    """Whether a torch-level callable has an out= form: a builtin (Python functions such as
    F.relu take no out=) whose ATen op of the same name has an out overload (conv2d has none)."""
    if not isinstance(fn, types.BuiltinFunctionType):
        return False
    packet = getattr(torch.ops.aten, getattr(fn, "__name__", ""), None)
    return packet is not None and any(o == "out" or o.endswith("_out") for o in packet.overloads())


def transient_reserve(graph: Graph, outside: Collection[str] = ()) -> int:
    """The most bytes one op computes outside the arena and copies in: the op's outputs
    (those in the arena) when its callable has no out= form, so it exists twice at its step.

    The prediction a planner takes out of the budget; `Stats.transient_peak_bytes` is what
    a run measured (more only if an out= call fails at run time and the op falls back)."""
    out = set(outside)
    return max([0] + [_transient(op, graph, out) for op in graph.ops])


def planned_peak(plan: Plan, graph: Graph, outside: Collection[str] = ()) -> int:
    """The most bytes a run of `plan` allocates at once, replaying what `TorchExecutor.run`
    does: the arena (its extent, until it is released), the graph outputs it returns
    (those in `outside` from their producer's step on, the others from the start), at each
    compute the op's transient when it takes the copy path, and the copies a release makes.
    Kernel workspaces are not counted."""
    release = _release(plan, graph, outside)
    return _replay(plan, graph, set(outside), release, _shrinks(plan, graph, outside, release))


@dataclass(frozen=True)
class _Tail:
    """The last steps of a plan, which write nothing into the arena."""

    start: int  # the plan step they start at
    keep: list[str]  # arena tensors they read: copied out when the arena is released


def _release(plan: Plan, graph: Graph, outside: Collection[str]) -> _Tail | None:
    """The plan's tail when releasing the arena before it lowers the run's peak, else None."""
    out = set(outside)
    sizes = {t.name: t.nbytes for t in plan.tensors}
    steps = plan.steps

    def writes(s: Any) -> bool:
        if s.kind == "load":
            return s.tensor not in out
        return s.kind == "compute" and any(o in sizes and o not in out for o in graph.op(s.op).outputs)
    start = len(steps)
    while start > 0 and not writes(steps[start - 1]):
        start -= 1
    if start == len(steps) or start == 0:
        return None
    resident: set[str] = set()
    for s in steps[:start]:
        if s.kind == "load" and s.tensor not in out:
            resident.add(s.tensor)  # type: ignore[arg-type]
        elif s.kind == "compute":
            resident |= {o for o in graph.op(s.op).outputs if o in sizes and o not in out}  # type: ignore[arg-type]
        elif s.kind == "free":
            resident.discard(s.tensor)  # type: ignore[arg-type]
    read: set[str] = set()
    for s in steps[start:]:
        read |= set(graph.op(s.op).inputs) if s.kind == "compute" else {s.tensor}  # type: ignore[arg-type]
    tail = _Tail(start, sorted(resident & read))
    return tail if _replay(plan, graph, out, tail, []) < _replay(plan, graph, out, None, []) else None


@dataclass(frozen=True)
class _Shrink:
    step: int  # before this plan step
    size: int  # the arena keeps its first `size` bytes


_MIN_SHRINK = 2**18  # bytes a shrink must save: each costs a reallocation and a copy of the live bytes


def _shrinks(plan: Plan, graph: Graph, outside: Collection[str], release: _Tail | None) -> list[_Shrink]:
    """Where the arena can keep only the bytes later steps reach, each time halving it (and
    saving at least _MIN_SHRINK), before the tail release if there is one. A shrink
    allocates the smaller storage before the old one goes, so one that would raise the
    replayed peak is left out: it pays only where later steps allocate what the plan does
    not see (kernel workspaces)."""
    out = set(outside)
    sizes = {t.name: t.nbytes for t in plan.tensors}
    steps = plan.steps
    n = len(steps)
    tops: dict[str, int] = {}
    reach = [0] * (n + 1)  # reach[k]: the highest byte of a residency that ends after step k - 1
    for k, st in enumerate(steps):
        if st.kind == "load" and st.tensor not in out:
            tops[st.tensor] = st.offset + sizes[st.tensor]  # type: ignore[index,operator]
        elif st.kind == "compute":
            tops.update((t, off + sizes[t]) for t, off in (st.offsets or {}).items() if t not in out)
        elif st.kind == "free" and st.tensor in tops:
            reach[k] = max(reach[k], tops.pop(st.tensor))  # type: ignore[arg-type]
    reach[n] = max([0] + list(tops.values()))
    for k in range(n - 1, -1, -1):
        reach[k] = max(reach[k], reach[k + 1])
    size, found = reach[0], []
    peak = _replay(plan, graph, out, release, [])
    for k in range(1, release.start if release is not None else n):
        if reach[k] < reach[k - 1] and reach[k] <= size // 2 and size - reach[k] >= _MIN_SHRINK and \
                _replay(plan, graph, out, release, found + [_Shrink(k, reach[k])]) <= peak:
            size = reach[k]
            found.append(_Shrink(k, size))
    return found


def _replay(plan: Plan, graph: Graph, out: set[str], tail: _Tail | None, shrinks: list[_Shrink]) -> int:
    """`planned_peak` for a given choice of releasing the arena (tail) or not (None), and of
    shrinking it."""
    ends = {graph.base(o) for o in graph.outputs}
    sizes = {t.name: t.nbytes for t in plan.tensors}
    arena = 0
    for s in plan.steps:
        if s.kind == "load":
            arena = max(arena, s.offset + sizes[s.tensor])  # type: ignore[operator,index]
        elif s.kind == "compute":
            arena = max([arena] + [off + sizes[t] for t, off in (s.offsets or {}).items()])
    held = sum(graph.tensors[o].nbytes for o in ends - out)
    made: set[str] = set()
    kept: set[str] = set()
    top = arena + held
    smaller = {x.step: x.size for x in shrinks}
    for k, s in enumerate(plan.steps):
        if k in smaller:  # the new storage is allocated before the old one goes
            top = max(top, arena + held + smaller[k])
            arena = smaller[k]
        if tail is not None and k == tail.start:
            copies = sum(graph.tensors[t].nbytes for t in tail.keep)
            top = max(top, arena + held + copies)
            arena, held, kept = 0, held + copies, set(tail.keep)
        if s.kind == "free" and s.tensor in kept:
            kept.discard(s.tensor)  # type: ignore[arg-type]
            held -= graph.tensors[s.tensor].nbytes  # type: ignore[index]
        if s.kind != "compute":
            continue
        op = graph.op(s.op)  # type: ignore[arg-type]
        for o in op.outputs:
            if o in out and o in ends and o not in made:
                made.add(o)
                held += graph.tensors[o].nbytes
        top = max(top, arena + held + _transient(op, graph, out))
    return top


def _fill(args: Any, values: list[torch.Tensor]) -> list[Any]:
    """Arguments with every op-input slot replaced by its value, as `run_steps` fills them."""
    def get(a: Any) -> Any:
        if isinstance(a, Ref):
            v = values[a.index]
            return v if a.shape is None else v.reshape(a.shape)
        return a
    return list(map_aggregate(args, get))


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


class _NoOrdering:
    """The CPU: every copy and op is synchronous, so there is nothing to order."""

    def begin(self) -> None:
        pass

    def end(self) -> None:
        pass

    def before(self, lane: str, reads: Sequence[str], writes: Sequence[tuple[str, torch.Tensor]]) -> None:
        pass

    def after(self, lane: str, reads: Sequence[str], writes: Sequence[tuple[str, torch.Tensor]]) -> None:
        pass

    def free(self, name: str) -> None:
        pass

    def on(self, lane: str) -> Any:
        return contextlib.nullcontext()


class CudaLanes:
    """The two CUDA lanes: "compute" is the caller's current stream, "copy" a side stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self.copy = torch.cuda.Stream(device)

    def stream(self, lane: str) -> Any:
        return torch.cuda.current_stream(self.device) if lane == "compute" else self.copy

    def record(self, lane: str) -> Any:
        event = torch.cuda.Event()
        event.record(self.stream(lane))
        return event

    def wait(self, lane: str, event: Any) -> None:
        self.stream(lane).wait_event(event)

    def start(self) -> None:
        self.copy.wait_stream(self.stream("compute"))  # the caller's inputs and the last run's work

    def finish(self) -> None:
        self.stream("compute").wait_stream(self.copy)  # outputs are complete for whoever reads them next

    def on(self, lane: str) -> Any:
        return torch.cuda.stream(self.stream(lane))


class _Ordering:
    """Orders two lanes (computes; loads and stores) by the bytes each step touches.

    For each resident tensor it keeps the event of the step that wrote it and the last
    event of each lane that touched it; a freed tensor leaves those last events on its
    byte range. Before a step on lane L runs, L waits on
      (1) the writer of each tensor the step reads, when the writer ran on the other lane;
      (2) the other lane's last event on every freed range the step writes over.
    Events of L's own lane are implied by stream order. A freed range fully covered by a
    new tenant is then dropped: anyone writing there later waits on that tenant, which
    came after it. `lanes` does the recording and waiting (`CudaLanes`; tests pass a fake).
    """

    def __init__(self, lanes: Any):
        self.lanes = lanes
        self.written: dict[str, tuple[str, Any]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.where: dict[str, tuple[int, int]] = {}
        self.freed: list[tuple[int, int, dict[str, Any]]] = []

    def begin(self) -> None:
        self.lanes.start()
        self.written, self.last, self.where, self.freed = {}, {}, {}, []

    def end(self) -> None:
        self.lanes.finish()

    def before(self, lane: str, reads: Sequence[str], writes: Sequence[tuple[str, torch.Tensor]]) -> None:
        other = "copy" if lane == "compute" else "compute"
        for t in reads:
            writer = self.written.get(t)
            if writer is not None and writer[0] != lane:
                self.lanes.wait(lane, writer[1])
        for name, view in writes:
            lo = view.data_ptr()
            hi = lo + view.numel() * view.element_size()
            kept = []
            for flo, fhi, events in self.freed:
                if flo < hi and lo < fhi:
                    if other in events:
                        self.lanes.wait(lane, events[other])
                    if lo <= flo and fhi <= hi:
                        continue
                kept.append((flo, fhi, events))
            self.freed = kept
            self.where[name] = (lo, hi)

    def after(self, lane: str, reads: Sequence[str], writes: Sequence[tuple[str, torch.Tensor]]) -> None:
        event = self.lanes.record(lane)
        for t in reads:
            self.last.setdefault(t, {})[lane] = event
        for name, _ in writes:
            self.written[name] = (lane, event)
            self.last[name] = {lane: event}

    def free(self, name: str) -> None:
        span = self.where.pop(name, None)  # None: it was written before the arena shrank (begin() again)
        if span is not None:
            self.freed.append((span[0], span[1], self.last.pop(name, {})))
        self.written.pop(name, None)

    def on(self, lane: str) -> Any:
        return self.lanes.on(lane)
