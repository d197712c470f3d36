"""The tensor-lifetime IR every pass walks: tensors, ops, the graph, and the target.

A `Graph` is what a frontend hands the planner: ops in a topological order (the file
order), the tensors they read and write, and each tensor's size at its own dtype.
Views (Reshape, Flatten, ...) are already folded: they live in `Graph.views` and share
their base tensor's bytes, so no op reads or writes them. A `Target` says how big fast
memory is and how tensors are sized in it (DESIGN §3).

    x ──conv──> y ──relu──> z          tensors: x (input), w (weight), y, z (output)
    w ──┘                              ops:     conv(x, w) -> y ; relu(y) -> z
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

Bytes = int  # a size or an offset in bytes
Step = int  # an index into a plan's steps or a schedule

KINDS = ("input", "weight", "activation", "output")


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]  # static; () for a scalar
    dtype: str  # numpy name: "float32", "int64", "bool", ...
    nbytes: Bytes  # at the tensor's own dtype
    kind: str  # one of KINDS
    producer: str | None = None  # op name; None for inputs and weights
    consumers: list[str] = field(default_factory=list)  # op names, in graph order
    alias: str | None = None  # for a folded view: the tensor whose bytes it shares

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Op:
    name: str
    type: str  # ONNX op type ("Conv") or aten target name ("aten.convolution")
    inputs: list[str]  # distinct tensor names, weights included, in argument order
    outputs: list[str]  # distinct tensor names
    flops: int = 0  # multiply and add count 2; 0 where unknown
    fn: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    # fn: fx route only. Called with the op's input values (in `inputs` order), returns
    # its outputs (a tuple in `outputs` order); folded views are applied inside it.


class GraphError(ValueError):
    """The graph breaks an IR invariant; the message says which and how to fix it."""


@dataclass
class Graph:
    name: str
    tensors: dict[str, Tensor]  # every tensor that takes memory, by name
    ops: list[Op]  # topological order
    inputs: list[str]  # graph inputs, in signature order
    outputs: list[str]  # graph outputs (names of tensors or of views in `views`)
    views: dict[str, Tensor] = field(default_factory=dict)  # folded views; alias set

    def op(self, name: str) -> Op:
        return self._ops_by_name()[name]

    def _ops_by_name(self) -> dict[str, Op]:
        cache = self.__dict__.get("_by_name")
        if cache is None or len(cache) != len(self.ops):
            cache = self.__dict__["_by_name"] = {o.name: o for o in self.ops}
        return cache

    def base(self, name: str) -> str:
        """The name of the tensor holding `name`'s bytes (itself unless a view)."""
        while name in self.views:
            name = self.views[name].alias  # type: ignore[assignment]
        return name

    def lint(self) -> Graph:
        """Checks order, names, links and sizes; returns self so frontends can chain it."""
        seen_ops: set[str] = set()
        available = {n for n, t in self.tensors.items() if t.kind in ("input", "weight")}
        for n, t in self.tensors.items():
            if n != t.name:
                raise GraphError(f"tensor stored under {n!r} is named {t.name!r}")
            if t.kind not in KINDS:
                raise GraphError(f"tensor {n!r} has kind {t.kind!r}; use one of {KINDS}")
            if t.nbytes <= 0:
                raise GraphError(f"tensor {n!r} has {t.nbytes} bytes; give it a static non-empty shape")
            if (t.producer is None) != (t.kind in ("input", "weight")):
                raise GraphError(f"tensor {n!r} of kind {t.kind} has producer {t.producer!r}")
        for o in self.ops:
            if o.name in seen_ops:
                raise GraphError(f"op name {o.name!r} is used twice; names must be unique")
            seen_ops.add(o.name)
            for i in o.inputs:
                if i not in self.tensors:
                    raise GraphError(f"op {o.name!r} reads unknown tensor {i!r}")
                if i not in available:
                    raise GraphError(f"op {o.name!r} reads {i!r} before it is produced; ops must be topologically ordered")
                if o.name not in self.tensors[i].consumers:
                    raise GraphError(f"op {o.name!r} reads {i!r} but is not among its consumers")
            for out in o.outputs:
                t = self.tensors.get(out)
                if t is None or t.producer != o.name:
                    raise GraphError(f"op {o.name!r} writes {out!r}, whose producer is not {o.name!r}")
                if out in available:
                    raise GraphError(f"tensor {out!r} is written twice")
                available.add(out)
            if len(set(o.inputs)) != len(o.inputs) or len(set(o.outputs)) != len(o.outputs):
                raise GraphError(f"op {o.name!r} lists a tensor twice; inputs and outputs are distinct names")
        for n, t in self.tensors.items():
            for c in t.consumers:
                if c not in seen_ops or n not in self.op(c).inputs:
                    raise GraphError(f"tensor {n!r} names consumer {c!r}, which does not read it")
            if t.producer is not None and t.producer not in seen_ops:
                raise GraphError(f"tensor {n!r} names missing producer {t.producer!r}")
        for v in self.views.values():
            if v.alias is None or (v.alias not in self.tensors and v.alias not in self.views):
                raise GraphError(f"view {v.name!r} aliases unknown tensor {v.alias!r}")
        for out in self.outputs:
            if self.tensors.get(self.base(out)) is None or self.tensors[self.base(out)].kind != "output":
                raise GraphError(f"graph output {out!r} is not an op's output tensor")
        for i in self.inputs:
            if i not in self.tensors or self.tensors[i].kind != "input":
                raise GraphError(f"graph input {i!r} is not an input tensor")
        return self


@dataclass(frozen=True)
class Target:
    """Fast memory and how tensors are sized in it. `capacity` is the budget."""

    name: str
    capacity: Bytes  # fast-memory bytes
    alignment: Bytes = 64  # every offset is a multiple of this
    element_bytes: int | None = None  # overrides every dtype's size (COSMA: 1)
    track_weights: bool = False  # weights occupy fast memory and cost traffic
    float_bytes: int | None = None  # overrides floating dtypes only (bf16: 2)
    kind: str = "accelerator"  # "accelerator" (frontends fuse epilogues by default) or "gpu"
    flops_per_s: float = 2e12  # roofline: compute throughput
    dma_bytes_per_s: float = 16e9  # roofline: slow <-> fast memory bandwidth

    def with_capacity(self, capacity: Bytes) -> Target:
        return dataclasses.replace(self, capacity=int(capacity))

    def size(self, t: Tensor) -> Bytes:
        """Bytes `t` takes in fast memory under this target."""
        if self.element_bytes is not None:
            return t.numel * self.element_bytes
        if self.float_bytes is not None and t.dtype.startswith(("float", "bfloat")):  # float8*, bfloat16 too
            return t.numel * self.float_bytes
        return t.nbytes

    def tracks(self, t: Tensor) -> bool:
        return t.kind != "weight" or self.track_weights

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> Target:
        names = {f.name for f in dataclasses.fields(Target)}
        return Target(**{k: v for k, v in d.items() if k in names})


# Presets. COSMA's accelerator: int8, 2 MiB scratchpad, 2 TOPS, 16 GB/s DRAM.
# GPU presets plan activations in device memory (weights stay where the model keeps them)
# backed by host memory over PCIe; compute figures are an H100's dense fp32 / bf16.
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cosma-int8", capacity=2 * 2**20, alignment=64, element_bytes=1),
        Target("cosma-int8-p", capacity=2 * 2**20, alignment=64, element_bytes=1, track_weights=True),
        Target("gpu-fp32", capacity=16 * 2**30, alignment=512, kind="gpu", flops_per_s=60e12, dma_bytes_per_s=25e9),
        Target("gpu-bf16", capacity=16 * 2**30, alignment=512, float_bytes=2, kind="gpu", flops_per_s=800e12,
               dma_bytes_per_s=25e9),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None
