"""The node-level rules of the torch.fx frontend (`frontends.fx`), with no state.

Tables name the ATen and torch functions each rule applies to, by `canon(node)` ("conv2d"
for aten.conv2d, torch.conv2d and nn.Conv2d alike): views, dropouts and no-op moves fold;
ANCHORS take epilogues (ACTIVATIONS, AFFINE, batch norm); FOLDS_BN take batch norm into
their weights; MOVES, NORMS and REDUCTIONS set FLOPs. Then come the static tensor metadata
(`Meta`), how a node is named (`type_name`) and counted (`flops`), and the callables an
Op's `fn` is made of (`ModuleCall`, `Method`, `CloneFirst`, `Ref`, `run_steps`).
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.fx import Node
from torch.fx.node import _get_qualified_name, map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata

from planner.errors import BadInput

VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "alias", "detach",
         "clone", "contiguous", "identity", "view_as", "reshape_as", "to", "_to_copy", "type", "type_as", "float",
         "double", "half", "bfloat16", "int", "long", "bool"}
DROPOUTS = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"}  # views when not training
NO_OP_MOVES = {"slice", "narrow", "expand", "expand_as", "cat", "concat", "concatenate"}  # views when
# the shape stays (a full slice, cat of one tensor)
ALIASING = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "alias", "detach",
            "view_as", "reshape_as", "expand", "expand_as", "slice", "narrow", "select", "transpose", "permute", "t",
            "getitem", "contiguous"}  # may share storage with their first argument
ANCHORS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "linear", "matmul", "mm", "bmm", "addmm", "baddbmm"}  # ONNX: Conv, Gemm, MatMul
FOLDS_BN = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "linear"}  # ONNX: Conv, ConvTranspose, Gemm
BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit"}
ACTIVATIONS = {"relu", "relu6", "hardtanh", "clamp", "clip", "sigmoid", "hardsigmoid", "hardswish", "leaky_relu",
               "tanh", "elu", "selu", "softplus", "prelu", "silu"}  # the ONNX frontend's list; not gelu there either
AFFINE = {"add", "sub", "mul", "div"}  # epilogues when the other operand is a weight or a number
MOVES = {"transpose", "permute", "t", "expand", "expand_as", "cat", "concat", "stack", "slice", "select", "narrow",
         "split", "split_with_sizes", "chunk", "unbind", "repeat", "tile", "index_select", "gather", "getitem",
         "constant_pad_nd", "pad", "roll", "flip", "copy"} | VIEWS
NORMS = {"softmax", "_softmax", "log_softmax", "_log_softmax", "layer_norm", "native_layer_norm", "group_norm",
         "native_group_norm", "instance_norm"}  # about 5 passes over the output; batch norm: a scale and a shift
REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "var", "std", "norm", "prod",
              "logsumexp"}
RANDOM = {"rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "randperm", "bernoulli", "normal",
          "uniform", "multinomial", "exponential", "dropout", "feature_dropout", "alpha_dropout", "native_dropout"}
SMALL = 64  # elements: constant tensors up to this size compare by value when merging duplicate nodes
DATA_DEPENDENT = {"item", "tolist", "_local_scalar_dense", "nonzero", "unique", "masked_select"}
RENAMES = {"truediv": "div", "iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "div"}
IN_PLACE_OPERATORS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
                      operator.imod: operator.mod, operator.ipow: operator.pow, operator.iand: operator.and_,
                      operator.ior: operator.or_, operator.ixor: operator.xor}
IN_PLACE_TWINS = {operator.add: operator.iadd, operator.sub: operator.isub, operator.mul: operator.imul,
                  operator.truediv: operator.itruediv, torch.relu: torch.relu_, torch.sigmoid: torch.sigmoid_,
                  torch.tanh: torch.tanh_, torch.add: torch.Tensor.add_, torch.mul: torch.Tensor.mul_}
MODULES = {"Conv1d": "conv1d", "Conv2d": "conv2d", "Conv3d": "conv3d", "ConvTranspose1d": "conv_transpose1d",
           "ConvTranspose2d": "conv_transpose2d", "ConvTranspose3d": "conv_transpose3d", "Linear": "linear",
           "BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm", "BatchNorm3d": "batch_norm", "ReLU": "relu",
           "ReLU6": "relu6", "Hardtanh": "hardtanh", "Hardswish": "hardswish", "Hardsigmoid": "hardsigmoid",
           "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyReLU": "leaky_relu", "ELU": "elu", "SELU": "selu",
           "Softplus": "softplus", "PReLU": "prelu", "SiLU": "silu", "GELU": "gelu", "Dropout": "dropout",
           "Dropout1d": "dropout", "Dropout2d": "dropout", "Dropout3d": "dropout", "AlphaDropout": "dropout",
           "Flatten": "flatten", "Unflatten": "unflatten", "Identity": "identity", "Softmax": "softmax",
           "LogSoftmax": "log_softmax", "LayerNorm": "layer_norm", "GroupNorm": "group_norm"}


@dataclass(frozen=True)
class Meta:
    """A tensor's static shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def meta_of(value: Any, where: str) -> Any:
    """`value` with every tensor-like (tensor, FakeTensor, TensorMetadata) made a Meta, in the same
    nesting of tuples and lists; raises BadInput on a symbolic size."""
    if isinstance(value, torch.SymInt) or (isinstance(value, (torch.Tensor, TensorMetadata))
                                           and not all(isinstance(d, int) for d in value.shape)):
        raise BadInput(f"{where} has a dynamic shape ({getattr(value, 'shape', value)}); give every input a"
                       " static shape (torch.compile: dynamic=False)")
    if isinstance(value, (torch.Tensor, TensorMetadata)):
        return Meta(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        items = [meta_of(v, where) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


class ModuleCall:
    """A submodule call with its parameters and buffers passed in (as `_params`), so they are weight tensors."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.names = [k for k, _ in module.named_parameters()] + [k for k, _ in module.named_buffers()]
        cls = type(module).__name__
        self.canon, self.type = MODULES.get(cls, cls.lower()), f"nn.{cls}"

    def __call__(self, *args: Any, _params: tuple = (), **kwargs: Any) -> Any:
        if getattr(self.module, "inplace", False):  # in-place modules run on a copy (see Rewrites.functionalize)
            args = (args[0].clone(), *args[1:])
        return torch.func.functional_call(self.module, dict(zip(self.names, _params)), args, kwargs)


class CloneFirst:
    """An in-place callable with no out-of-place twin, run on a copy of the tensor it would write."""

    def __init__(self, target: Callable[..., Any], op_type: str):
        self.target, self.type = target, op_type

    def __call__(self, first: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.target(first.clone(), *args, **kwargs)


class Method:
    """Calls a Tensor method by name, for call_method nodes."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, self.name)(*args, **kwargs)


class Ref:
    """An argument slot of a fused callable: op input `index` (or step `index` when `step`),
    reshaped to `shape` when the argument is a folded view."""

    __slots__ = ("index", "step", "shape")

    def __init__(self, index: int, step: bool, shape: tuple[int, ...] | None):
        self.index, self.step, self.shape = index, step, shape


def callable_of(n: Node) -> Callable[..., Any]:
    return Method(n.target) if n.op == "call_method" else n.target  # type: ignore[arg-type,return-value]


def type_name(n: Node) -> str:
    """Op.type: "aten.conv2d", "torch.conv2d", "Tensor.view", "nn.Conv2d", "operator.add"."""
    t = n.target
    if n.op == "call_method":
        return f"Tensor.{t}"
    if isinstance(t, (ModuleCall, CloneFirst)):
        return t.type
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket._qualified_op_name.replace("::", ".")
    if isinstance(t, torch._ops.OpOverloadPacket):
        return t._qualified_op_name.replace("::", ".")
    try:
        return _get_qualified_name(t).replace("_operator.", "operator.")  # type: ignore[arg-type]
    except Exception:
        return getattr(t, "__name__", type(t).__name__)


def canon(n: Node) -> str:
    """The name the folding and fusion rules use: "conv2d" for aten.conv2d, torch.conv2d and nn.Conv2d."""
    if n.op not in ("call_function", "call_method"):
        return n.op
    if isinstance(n.target, ModuleCall):
        return n.target.canon
    name = type_name(n).rsplit(".", 1)[-1]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return RENAMES.get(name, name)


def arg_of(n: Node, index: int, key: str, default: Any = None) -> Any:
    if index < len(n.args):
        return n.args[index]
    return n.kwargs.get(key, default)


def data_arg(n: Node) -> Node | None:
    """The tensor a view-like node reads: its first argument, or the only one of cat([x])."""
    first = n.args[0] if n.args else None
    if isinstance(first, (list, tuple)) and len(first) == 1:
        first = first[0]
    return first if isinstance(first, Node) else None


def is_transposed(n: Node) -> bool:
    name = canon(n)
    return "transpose" in name or (name in ("convolution", "_convolution") and bool(arg_of(n, 6, "transposed")))


def is_random(n: Node) -> bool:
    if isinstance(n.target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in n.target.tags
    return canon(n) in RANDOM


def flops(n: Node, meta: dict[Node, Any]) -> int:
    """FLOPs of node `n` (`meta`: every node's Meta): multiply and add count 2; about numel for
    elementwise ops; 0 for data movement."""
    name, out = canon(n), meta[n]
    if n.target is operator.getitem or name in MOVES:
        return 0
    outs = [out] if isinstance(out, Meta) else [m for m in out if isinstance(m, Meta)]
    numel = sum(m.numel for m in outs)
    shapes = [meta[a].shape for a in n.args if isinstance(a, Node) and isinstance(meta.get(a), Meta)]
    if isinstance(n.target, ModuleCall) and name in ANCHORS:
        shapes = [shapes[0], tuple(n.target.module.weight.shape)]
    if name in ANCHORS and len(shapes) >= 2:
        if name == "linear":
            return 2 * numel * shapes[1][-1]
        if "conv" in name:
            return 2 * (math.prod(shapes[0]) if is_transposed(n) else numel) * math.prod(shapes[1][1:])
        return 2 * numel * (shapes[1] if name in ("addmm", "baddbmm") else shapes[0])[-1]
    if name == "scaled_dot_product_attention" and len(shapes) >= 3:
        q, k, v = shapes[:3]
        scores = math.prod(q[:-1]) * k[-2]
        return 2 * scores * (q[-1] + v[-1]) + 5 * scores
    if "pool" in name and shapes:
        spatial = len(outs[0].shape) - 2
        if "adaptive" in name:
            return numel * math.prod(-(-i // o) for i, o in zip(shapes[0][-spatial:], outs[0].shape[-spatial:]))
        kernel = arg_of(n, 1, "kernel_size", 1)
        return numel * math.prod([kernel] * spatial if isinstance(kernel, int) else kernel)
    if name in NORMS:
        return 5 * numel
    if name in BATCH_NORMS:
        return 2 * numel
    if name in REDUCTIONS and shapes:
        return math.prod(shapes[0])
    return numel


def in_place(n: Node, args: tuple, kwargs: dict, meta: dict[Node, Any]) -> tuple[Callable[..., Any], tuple] | None:
    """(callable, (args, kwargs)) running a fused activation or affine epilogue in place on its
    first argument, an earlier step of the same op that is no folded view (read by nothing else,
    as fusion checks); else None."""
    first = args[0] if args else None
    if canon(n) not in ACTIVATIONS | AFFINE or not isinstance(first, Ref) or not first.step \
            or first.shape is not None:
        return None
    if meta[n].dtype != meta[n.args[0]].dtype:
        return None  # type promotion: the result does not fit in the intermediate
    t = n.target
    if isinstance(t, torch._ops.OpOverload):
        packet = getattr(getattr(torch.ops, t.namespace), t.overloadpacket.__name__ + "_", None)
        twin = getattr(packet, t._overloadname, None)
        return None if twin is None else (twin, (args, kwargs))
    if n.op == "call_method":
        return (Method(t + "_"), (args, kwargs)) if hasattr(torch.Tensor, t + "_") else None  # type: ignore
    if t in IN_PLACE_TWINS:
        return IN_PLACE_TWINS[t], (args, kwargs)
    try:
        params = list(inspect.signature(t).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if "inplace" not in params:  # F.relu, F.hardswish, ... take inplace=
        return None
    k = params.index("inplace")
    if k < len(args):
        return t, ((*args[:k], True, *args[k + 1:]), kwargs)  # type: ignore[return-value]
    return t, (args, {**kwargs, "inplace": True})  # type: ignore[return-value]


def run_steps(steps: list[tuple[Callable[..., Any], tuple]], outs: list[int], *values: Any) -> tuple:
    """Runs a group's steps: each argument is a value, or a Ref to an op input or an earlier step."""
    done: list[Any] = []

    def get(a: Any) -> Any:
        if not isinstance(a, Ref):
            return a
        v = done[a.index] if a.step else values[a.index]
        return v if a.shape is None else v.reshape(a.shape)
    for fn, (args, kwargs) in steps:
        done.append(fn(*map_aggregate(args, get), **map_aggregate(kwargs, get)))
    return tuple(done[k] for k in outs)
