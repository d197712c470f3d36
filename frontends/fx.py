"""torch.fx -> planner IR: a linted `Graph`, plus the weight values an executor needs.

Two ways in. `lower_module` exports an nn.Module with `torch.export` (ATen ops such as
aten.conv2d, aten.linear, aten.batch_norm); `lower_graph_module` takes the torch-level
GraphModule that torch.compile hands a backend (or one from symbolic_trace) and sizes it
with ShapeProp on the example inputs. Both return a `Lowered`; `load_module` and
`load_graph_module` return its graph alone. `run_graph` runs a lowered graph op by op.

What happens to the fx nodes, in the order the methods of `_Lowering` run:

1. call_module nodes become calls whose parameters are explicit weight tensors.
2. In-place ops (relu_, add_, x += y, F.relu(inplace=True)) run out of place and later
   readers of the mutated tensor read the result: the planner reorders ops, so a mutation
   must be a new tensor. A mutated graph input or buffer is not written back.
3. fold_bn: eval-mode batch norm right after a conv or a 2-D linear is folded into that
   op's weights (torch.nn.utils.fusion), as torch.onnx.export does, when the conv feeds
   only the batch norm and its weights and the batch norm's statistics are all weights.
4. Each node becomes one of
   - a duplicate: it computes what an earlier node does (same target and arguments, small
     constants compared by value), so it is merged into that node, as the ONNX exporter's
     optimizer does (DARTS-like cells apply relu(s) once per reader of s);
   - an input (a user placeholder) or a weight (parameter, buffer, lifted constant, get_attr);
   - a constant: a node reading only weights and constants is evaluated now, giving a
     new weight (a tensor) or a value substituted into its readers (an int, a shape);
   - a folded view (DESIGN §3): view, reshape, flatten, unflatten, squeeze, unsqueeze,
     alias, detach, clone, contiguous, dtype-preserving to(), eval-mode dropout, and a
     slice, expand or cat that keeps the shape. It enters `Graph.views` aliasing its base
     and ops read the base. Every folded view keeps its base's elements in row-major
     order, so its value is `base.reshape(view.shape)`; executors need nothing else.
     Transpose, permute, t, expand, select and slice stay ops, as their ONNX twins do, so
     both frontends count the same bytes;
   - one output of a multi-output op (getitem of its tuple), or an op.
5. Ops with no path to a graph output are dropped; so are weights nothing reads.
6. fuse: epilogues fold into the conv/linear/matmul before them (`_Lowering.fuse`), with
   the ONNX frontend's rule, so both routes give the same bytes and M_R.

Each Op keeps a callable in `Op.fn`: called with the values of `Op.inputs`, it returns the
values of `Op.outputs` as a tuple, rebuilding folded views and running fused chains inside
(activations in place on the anchor's output, so a fused op holds no tensor the plan does
not count). Unused outputs of multi-output ops are not tensors.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Collection

import torch
from torch.fx import Graph as FxGraph
from torch.fx import GraphModule, Node
from torch.fx.node import _get_qualified_name, map_aggregate, map_arg
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from planner.errors import BadInput, UnsupportedModel
from planner.ir import Graph, GraphError, Op, Tensor

__all__ = ["Lowered", "lower_module", "load_module", "lower_graph_module", "load_graph_module", "run_graph"]

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


@dataclass
class Lowered:
    """A lowered model: the planner's graph and what running it needs beyond the inputs."""

    graph: Graph
    weights: dict[str, torch.Tensor]  # every weight tensor of `graph`, by name; shares storage with the
    # module's parameters and buffers except for folded weights (batch norm, constants), computed once
    outputs: list[str]  # one name per flattened model output, in order, repeats kept (graph.outputs: each once)


def lower_module(module: torch.nn.Module, example_inputs: tuple, *, fuse: bool = False, fold_bn: bool = True,
                 name: str | None = None) -> Lowered:
    """Exports `module` with torch.export and lowers the ATen graph.

    The module runs in whatever train/eval mode the caller left it in; call `module.eval()`
    first for inference (eval-mode dropout is a view and batch norm can fold; in train mode
    both are ops, and batch norm's running statistics are not written back).

    Parameters
    ----------
    module : the model; not modified.
    example_inputs : positional tensors; their shapes are the shapes planned (no dynamic dims).
    fuse : fold batch norm and activations into the conv/linear/matmul before them.
    fold_bn : fold eval-mode batch norm into the weights of the conv or linear before it,
        as torch.onnx.export does; False keeps it an op (what eager PyTorch runs).
    name : Graph.name; default the module's class name.

    Returns
    -------
    Lowered : the linted graph, the weight values by tensor name, the output names.

    Raises
    ------
    UnsupportedModel : torch.export cannot capture the model (data-dependent control flow,
        ...), or an output is an input or a constant, or an op reads a whole tuple.
    BadInput : a dynamic shape, an empty tensor.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval()
    >>> low = lower_module(m, (torch.randn(2, 4),), fuse=True)
    >>> [(op.type, op.inputs, op.outputs, op.flops) for op in low.graph.ops]
    [('aten.linear+aten.relu', ['input', 'p_0_weight', 'p_0_bias'], ['relu'], 144)]
    >>> sorted(low.weights), low.graph.tensors["relu"].nbytes
    (['p_0_bias', 'p_0_weight'], 64)
    """
    name = name or type(module).__name__
    try:
        ep = torch.export.export(module, tuple(example_inputs))
    except Exception as e:
        raise UnsupportedModel(f"torch.export cannot capture {name}: {_first_line(e)}") from e
    g = _copy(ep.graph_module.graph)
    sig, kinds = ep.graph_signature, torch.export.graph_signature
    low = _Lowering(g, ep.graph_module, name)
    specs = {s.arg.name: s for s in sig.input_specs if isinstance(s.arg, kinds.TensorArgument)}
    weights = (kinds.InputKind.PARAMETER, kinds.InputKind.BUFFER, kinds.InputKind.CONSTANT_TENSOR)
    for node in g.nodes:
        if node.op == "output":
            continue
        low.meta[node] = _meta_of(node.meta.get("val"), f"{_role(node)} {node.name!r}")
        spec = specs.get(node.name) if node.op == "placeholder" else None
        if spec is not None and spec.kind in weights:
            low.values[node] = (ep.constants if spec.target in ep.constants else ep.state_dict)[spec.target]
        elif spec is not None and spec.kind != kinds.InputKind.USER_INPUT:
            raise UnsupportedModel(f"{name}: input {node.name!r} is a {spec.kind.name.lower()}, which the planner"
                                   " cannot lower")
        elif node.op == "placeholder" and isinstance(low.meta[node], _Meta):
            low.inputs.append(node)
        elif node.op == "placeholder":
            low.values[node] = low.meta[node]  # an int or a flag export specialised on
    outputs = []
    for spec in sig.output_specs:
        if spec.kind == kinds.OutputKind.USER_INPUT_MUTATION:
            raise UnsupportedModel(f"{name} writes into its input {spec.target!r}; the planner cannot keep that")
        if spec.kind in (kinds.OutputKind.USER_OUTPUT, kinds.OutputKind.LOSS_OUTPUT):
            outputs.append(spec.arg.name if isinstance(spec.arg, kinds.TensorArgument) else None)
    by_name = {n.name: n for n in g.nodes}
    return low.run([by_name.get(o) if o else None for o in outputs], fuse=fuse, fold_bn=fold_bn)


def load_module(module: torch.nn.Module, example_inputs: tuple, *, fuse: bool = False, fold_bn: bool = True,
                name: str | None = None) -> Graph:
    """`lower_module(...).graph`: the linted planner Graph of `module`."""
    return lower_module(module, example_inputs, fuse=fuse, fold_bn=fold_bn, name=name).graph


def lower_graph_module(gm: GraphModule, example_inputs: list | tuple, *, fuse: bool = False, fold_bn: bool = True,
                       weight_inputs: Collection[int] = (), name: str | None = None) -> Lowered:
    """Lowers a GraphModule as torch.compile hands it to a backend (torch-level call_function,
    call_method, call_module and get_attr nodes) or as symbolic_trace makes it.

    Shapes come from ShapeProp on `example_inputs` (FakeTensors work too). Placeholders are
    inputs, including the parameters and buffers dynamo lifts to placeholders, unless listed
    in `weight_inputs`; get_attr tensors and the parameters of called submodules are weights.
    `gm` is not modified.

    Parameters
    ----------
    gm, example_inputs : the graph and one value per placeholder.
    fuse, fold_bn : as for `lower_module`.
    weight_inputs : positions in `example_inputs` holding parameters or buffers (dynamo's
        placeholder meta "grapharg" names their source). They become weights, their current
        values constants: batch norm can fold and epilogues fuse, but later updates to them
        (training) are not seen; leave this empty when the values will change.
    name : Graph.name; default "graph_module".

    Returns
    -------
    Lowered : as for `lower_module`.

    Raises
    ------
    BadInput : a dynamic shape (compile with dynamic=False), wrong example inputs.
    UnsupportedModel : an output that is an input or a constant, a non-tensor output,
        an in-place op writing through a view, an op reading a whole tuple.
    """
    name = name or "graph_module"
    g = _copy(gm.graph)
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise BadInput(f"{name} has {len(placeholders)} placeholders but {len(example_inputs)} example inputs")
    declared = [n.meta.get("example_value", n.meta.get("val")) for n in placeholders]
    for node, d in zip(placeholders, declared):
        if isinstance(d, torch.Tensor):
            _meta_of(d, f"input {node.name!r}")  # raises on a dynamic dim, naming the input
    for node, d, x in zip(placeholders, declared, example_inputs):
        if isinstance(x, torch.SymInt) or isinstance(d, torch.SymInt):
            raise BadInput(f"input {node.name!r} is a symbolic size: the graph has dynamic shapes;"
                           " compile with dynamic=False")
    owner = GraphModule(gm, g)
    prop = _ShapeProp(owner, fake_mode=torch._guards.detect_fake_mode(list(example_inputs)))
    try:
        prop.propagate(*example_inputs)
    except Exception as e:
        raise BadInput(f"{name} does not run on its example inputs: {_first_line(e.__cause__ or e)}") from e
    low = _Lowering(g, owner, name)
    for node in g.nodes:
        if node.op == "output":
            continue
        low.meta[node] = _meta_of(node.meta["tensor_meta"] if "tensor_meta" in node.meta
                                  else prop.values.get(node), f"{_role(node)} {node.name!r}")
    for k, node in enumerate(placeholders):
        if isinstance(low.meta[node], _Meta) and k not in weight_inputs:
            low.inputs.append(node)
        else:
            low.values[node] = example_inputs[k]
    out = next(n for n in g.nodes if n.op == "output")
    flat: list[Any] = []
    map_aggregate(out.args[0], flat.append)
    return low.run([a if isinstance(a, Node) else None for a in flat], fuse=fuse, fold_bn=fold_bn)


def load_graph_module(gm: GraphModule, example_inputs: list | tuple, *, fuse: bool = False, fold_bn: bool = True,
                      weight_inputs: Collection[int] = (), name: str | None = None) -> Graph:
    """`lower_graph_module(...).graph`: the linted planner Graph of `gm`."""
    return lower_graph_module(gm, example_inputs, fuse=fuse, fold_bn=fold_bn, weight_inputs=weight_inputs,
                              name=name).graph


def run_graph(graph: Graph, inputs: dict[str, torch.Tensor],
              weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Runs the ops of `graph` in order and returns the value of each graph output.

    A reference executor: one loop over `graph.ops` calling `Op.fn`, each value dropped
    after its last reader, and output views rebuilt as `base.reshape(view.shape)`.

    Parameters
    ----------
    graph : a graph from this frontend (every op has `fn`).
    inputs : graph input name -> value.
    weights : weight name -> value, e.g. `Lowered.weights`.
    """
    env = {**weights, **inputs}
    keep = {graph.base(o) for o in graph.outputs}
    last = {t: k for k, op in enumerate(graph.ops) for t in op.inputs}
    for k, op in enumerate(graph.ops):
        env.update(zip(op.outputs, op.fn(*(env[t] for t in op.inputs))))
        for t in op.inputs:
            if last[t] == k and t not in keep:
                del env[t]
    return {o: env[o] if o not in graph.views else env[graph.base(o)].reshape(graph.views[o].shape)
            for o in graph.outputs}


@dataclass(frozen=True)
class _Meta:
    """A tensor's static shape and dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _meta_of(value: Any, where: str) -> Any:
    """`value` with every tensor-like (tensor, FakeTensor, TensorMetadata) made a _Meta, in the same
    nesting of tuples and lists; raises BadInput on a symbolic size."""
    if isinstance(value, torch.SymInt) or (isinstance(value, (torch.Tensor, TensorMetadata))
                                           and not all(isinstance(d, int) for d in value.shape)):
        raise BadInput(f"{where} has a dynamic shape ({getattr(value, 'shape', value)}); give every input a"
                       " static shape (torch.compile: dynamic=False)")
    if isinstance(value, (torch.Tensor, TensorMetadata)):
        return _Meta(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        items = [_meta_of(v, where) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _role(n: Node) -> str:
    return "input" if n.op == "placeholder" else "tensor"


def _has_tensor(meta: Any) -> bool:
    if isinstance(meta, (tuple, list)):
        return any(_has_tensor(m) for m in meta)
    return isinstance(meta, _Meta)


def _copy(graph: FxGraph) -> FxGraph:
    """A private copy of `graph` (nodes, names, meta dicts), so rewrites never touch the caller's."""
    g: FxGraph = FxGraph()
    copies: dict[Node, Node] = {}
    g.output(g.graph_copy(graph, copies))
    for old, new in copies.items():
        new.name = old.name  # the copy renames builtins ("input" -> "input_1"), which fx never generates itself
    return g


class _ShapeProp(ShapeProp):
    """ShapeProp that also keeps the values of non-tensor nodes (sizes, dtypes), which readers need."""

    def __init__(self, gm: GraphModule, fake_mode: Any = None):
        super().__init__(gm, fake_mode)
        self.values: dict[Node, Any] = {}

    def run_node(self, n: Node) -> Any:
        n.meta.pop("tensor_meta", None)
        result = super().run_node(n)
        if "tensor_meta" not in n.meta:
            self.values[n] = result
        return result


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


class _ModuleCall:
    """A submodule call with its parameters and buffers passed in (as `_params`), so they are weight tensors."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.names = [k for k, _ in module.named_parameters()] + [k for k, _ in module.named_buffers()]
        cls = type(module).__name__
        self.canon, self.type = MODULES.get(cls, cls.lower()), f"nn.{cls}"

    def __call__(self, *args: Any, _params: tuple = (), **kwargs: Any) -> Any:
        if getattr(self.module, "inplace", False):  # in-place modules run on a copy (see _Lowering.functionalize)
            args = (args[0].clone(), *args[1:])
        return torch.func.functional_call(self.module, dict(zip(self.names, _params)), args, kwargs)


class _CloneFirst:
    """An in-place callable with no out-of-place twin, run on a copy of the tensor it would write."""

    def __init__(self, target: Callable[..., Any], type_name: str):
        self.target, self.type = target, type_name

    def __call__(self, first: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.target(first.clone(), *args, **kwargs)


def _set_item(x: torch.Tensor, index: Any, value: Any) -> torch.Tensor:
    x[index] = value
    return x


class _Method:
    """Calls a Tensor method by name, for call_method nodes."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, self.name)(*args, **kwargs)


class _Ref:
    """An argument slot of a fused callable: op input `index` (or step `index` when `step`),
    reshaped to `shape` when the argument is a folded view."""

    __slots__ = ("index", "step", "shape")

    def __init__(self, index: int, step: bool, shape: tuple[int, ...] | None):
        self.index, self.step, self.shape = index, step, shape


def _callable(n: Node) -> Callable[..., Any]:
    return _Method(n.target) if n.op == "call_method" else n.target  # type: ignore[arg-type,return-value]


def _type(n: Node) -> str:
    """Op.type: "aten.conv2d", "torch.conv2d", "Tensor.view", "nn.Conv2d", "operator.add"."""
    t = n.target
    if n.op == "call_method":
        return f"Tensor.{t}"
    if isinstance(t, (_ModuleCall, _CloneFirst)):
        return t.type
    if isinstance(t, torch._ops.OpOverload):
        return t.overloadpacket._qualified_op_name.replace("::", ".")
    if isinstance(t, torch._ops.OpOverloadPacket):
        return t._qualified_op_name.replace("::", ".")
    try:
        return _get_qualified_name(t).replace("_operator.", "operator.")  # type: ignore[arg-type]
    except Exception:
        return getattr(t, "__name__", type(t).__name__)


def _canon(n: Node) -> str:
    """The name the folding and fusion rules use: "conv2d" for aten.conv2d, torch.conv2d and nn.Conv2d."""
    if n.op not in ("call_function", "call_method"):
        return n.op
    if isinstance(n.target, _ModuleCall):
        return n.target.canon
    name = _type(n).rsplit(".", 1)[-1]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return RENAMES.get(name, name)


def _arg(n: Node, index: int, key: str, default: Any = None) -> Any:
    if index < len(n.args):
        return n.args[index]
    return n.kwargs.get(key, default)


def _set_arg(n: Node, index: int, key: str, value: Any) -> None:
    if index < len(n.args):
        n.update_arg(index, value)
    elif index == len(n.args) and key not in n.kwargs:
        n.args = (*n.args, value)
    else:
        n.update_kwarg(key, value)


def _torch_in_place(t: Any) -> Callable[..., Any] | None:
    """The out-of-place twin of an in-place torch function (torch.relu_ -> torch.relu), else None."""
    name = getattr(t, "__name__", "")
    if not name.endswith("_") or name.endswith("__"):
        return None
    for module in (torch, torch.nn.functional):
        if getattr(module, name, None) is t:
            return getattr(module, name[:-1], None)
    return None


def _data_arg(n: Node) -> Node | None:
    """The tensor a view-like node reads: its first argument, or the only one of cat([x])."""
    first = n.args[0] if n.args else None
    if isinstance(first, (list, tuple)) and len(first) == 1:
        first = first[0]
    return first if isinstance(first, Node) else None


def _transposed(n: Node) -> bool:
    name = _canon(n)
    return "transpose" in name or (name in ("convolution", "_convolution") and bool(_arg(n, 6, "transposed")))


def _random(n: Node) -> bool:
    if isinstance(n.target, torch._ops.OpOverload):
        return torch.Tag.nondeterministic_seeded in n.target.tags
    return _canon(n) in RANDOM


class _Lowering:
    """One fx graph (a private copy) on its way to a planner Graph.

    `meta` holds every node's _Meta (or tuple of them, or plain value); `values` the value of
    every constant node, weights included; `kind` what `classify` made of each node.
    """

    def __init__(self, g: FxGraph, owner: torch.nn.Module, name: str):
        self.g, self.owner, self.name = g, owner, name
        self.meta: dict[Node, Any] = {}
        self.values: dict[Node, Any] = {}
        self.inputs: list[Node] = []
        self.kind: dict[Node, str] = {}  # "input", "const", "view", "item" (of a multi-output op), "op"
        self.root: dict[Node, Node] = {}  # folded view -> the node holding its bytes
        self.label: dict[Node, str] = {}  # op types other than _type(node): conv with a folded batch norm
        self.alive: set[Node] = set()

    def run(self, outputs: list[Node | None], *, fuse: bool, fold_bn: bool) -> Lowered:
        for k, o in enumerate(outputs):
            if o is None or not isinstance(self.meta.get(o), _Meta):
                raise UnsupportedModel(f"{self.name}: output {k} is not a tensor; return tensors only")
        self.inline_modules()
        outputs = self.functionalize(outputs)
        if fold_bn:
            self.fold_batch_norm()
        outputs = self.classify(outputs)
        groups = self.group(self.live(outputs))
        if fuse:
            groups = self.fuse(groups, outputs)
        return self.emit(groups, outputs)  # type: ignore[arg-type]

    # 1. attributes and submodules ---------------------------------------------------------
    def inline_modules(self) -> None:
        """Reads get_attr values; call_module -> a _ModuleCall whose parameters are get_attr nodes."""
        for n in list(self.g.nodes):
            if n.op == "get_attr" and n not in self.values:
                self.values[n] = functools.reduce(getattr, n.target.split("."), self.owner)  # type: ignore[union-attr]
                self.meta[n] = _meta_of(self.values[n], n.name)
            elif n.op == "call_module":
                n.op = "call_function"
                self._call_module(n, self.owner.get_submodule(n.target))  # type: ignore[arg-type]

    def _call_module(self, n: Node, module: torch.nn.Module) -> None:
        """Makes `n` call `module` with its parameters and buffers as get_attr nodes (weights)."""
        old = n.kwargs.get("_params", ())
        n.target = call = _ModuleCall(module)
        state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        with self.g.inserting_before(n):
            params = tuple(self.g.create_node("get_attr", f"{n.name}.{k}") for k in call.names)
        for p, k in zip(params, call.names):
            self.values[p], self.meta[p] = state[k], _meta_of(state[k], p.name)
        n.kwargs = {**n.kwargs, "_params": params}
        for p in old:
            self.g.erase_node(p)

    # 2. in-place ops ----------------------------------------------------------------------
    def functionalize(self, outputs: list[Node | None]) -> list[Node | None]:
        """Runs each in-place op out of place and points later readers of what it wrote at its result.

        Raises when the written tensor is a view whose base is read later: that reader
        would see the write in eager PyTorch and not here.
        """
        order = {n: k for k, n in enumerate(self.g.nodes)}
        for n in list(self.g.nodes):
            written = self._written(n)
            if written is None:
                continue
            alias = written
            while alias.op in ("call_function", "call_method") and _canon(alias) in ALIASING and alias.args \
                    and isinstance(alias.args[0], Node):
                alias = alias.args[0]
                if any(order.get(u, -1) > order[n] for u in alias.users):
                    raise UnsupportedModel(f"{self.name}: in-place op {n.name!r} writes through the view"
                                           f" {written.name!r} of {alias.name!r}, which is read later")
            self._out_of_place(n)
            for user in list(written.users):
                if user is not n and order.get(user, -1) > order[n]:
                    user.replace_input_with(written, n)
            outputs = [n if o is written else o for o in outputs]
        return outputs

    def _written(self, n: Node) -> Node | None:
        """The node an in-place op writes (its first argument), else None."""
        t, first = n.target, n.args[0] if n.args and isinstance(n.args[0], Node) else None
        if n.op == "call_method":
            inplace = t.endswith("_") and not t.endswith("__")  # type: ignore[union-attr]
        elif isinstance(t, torch._ops.OpOverload):
            args = t._schema.arguments
            inplace = bool(args) and args[0].alias_info is not None and args[0].alias_info.is_write
        elif isinstance(t, _ModuleCall):
            inplace = bool(getattr(t.module, "inplace", False))
        elif n.op == "call_function":
            inplace = t in IN_PLACE_OPERATORS or t is operator.setitem or n.kwargs.get("inplace") is True or \
                _torch_in_place(t) is not None
        else:
            inplace = False
        return first if inplace else None

    def _out_of_place(self, n: Node) -> None:
        """Retargets an in-place node to its out-of-place twin, or runs it on a copy."""
        t = n.target
        if isinstance(t, _ModuleCall):
            return  # _ModuleCall copies the argument of an in-place module
        if n.kwargs.get("inplace") is True:
            n.update_kwarg("inplace", False)
        elif t in IN_PLACE_OPERATORS:
            n.target = IN_PLACE_OPERATORS[t]  # type: ignore[index]
        elif t is operator.setitem:  # x[i] = v returns None; its twin returns the written copy
            n.target, self.meta[n] = _CloneFirst(_set_item, "operator.setitem"), self.meta[n.args[0]]
        elif n.op == "call_method":
            if hasattr(torch.Tensor, t[:-1]):  # type: ignore[index]
                n.target = t[:-1]  # type: ignore[index]
            else:
                n.op, n.target = "call_function", _CloneFirst(_Method(t), f"Tensor.{t}")  # type: ignore[arg-type]
        else:
            if isinstance(t, torch._ops.OpOverload):
                packet = getattr(getattr(torch.ops, t.namespace), t.overloadpacket.__name__[:-1], None)
                twin = getattr(packet, t._overloadname, None)
            else:
                twin = _torch_in_place(t)
            n.target = twin if twin is not None else _CloneFirst(t, _type(n))  # type: ignore[assignment]

    # 3. batch norm ------------------------------------------------------------------------
    def fold_batch_norm(self) -> None:
        """Folds eval-mode batch norm into the weights of the conv or 2-D linear that feeds it.

        The conditions of the onnxscript rewrite torch.onnx.export runs: the conv's output is
        read only by the batch norm, the conv's weight and bias by nothing else, and they and
        the batch norm's statistics and affine parameters are weights.
        """
        for b in list(self.g.nodes):
            c = b.args[0] if b.op == "call_function" and _canon(b) in BATCH_NORMS and b.args else None
            if not isinstance(c, Node) or len(c.users) != 1 or c.op != "call_function" or _canon(c) not in FOLDS_BN:
                continue
            bn, conv = self._bn_state(b), self._conv_state(c)
            picks = list(b.users) if not isinstance(self.meta[b], _Meta) else []  # getitems of a tuple result
            if bn is None or conv is None or any(u.target is not operator.getitem or (u.args[1] != 0 and u.users)
                                                 for u in picks):
                continue
            w, cb, transposed = conv
            if _canon(c) == "linear":
                ones, zeros = torch.ones_like(bn["running_mean"]), torch.zeros_like(bn["running_mean"])
                fw, fb = fuse_linear_bn_weights(w, cb, bn["running_mean"], bn["running_var"], bn["eps"],
                                                ones if bn["weight"] is None else bn["weight"],
                                                zeros if bn["bias"] is None else bn["bias"])
            else:
                fw, fb = fuse_conv_bn_weights(w, cb, bn["running_mean"], bn["running_var"], bn["eps"], bn["weight"],
                                              bn["bias"], transpose=transposed)
            if isinstance(c.target, _ModuleCall):
                module = copy.copy(c.target.module)
                module._parameters = {**module._parameters, "weight": fw, "bias": fb}
                self._call_module(c, module)
            else:
                with self.g.inserting_before(c):
                    nw, nb = (self.g.create_node("get_attr", f"{c.name}_{k}") for k in ("weight", "bias"))
                for node, value in ((nw, fw.detach()), (nb, fb.detach())):
                    self.values[node], self.meta[node] = value, _meta_of(value, node.name)
                _set_arg(c, 1, "weight", nw)
                _set_arg(c, 2, "bias", nb)
            self.label[c] = f"{self.label.get(c, _type(c))}+{_type(b)}"
            for u in picks:
                if u.args[1] == 0:
                    u.replace_all_uses_with(c)
                self.g.erase_node(u)
            b.replace_all_uses_with(c)
            self.g.erase_node(b)

    def _bn_state(self, b: Node) -> dict[str, Any] | None:
        """An eval-mode batch norm's running_mean, running_var, weight, bias (values) and eps; None
        when it is training or any of them is not a weight."""
        if isinstance(b.target, _ModuleCall):
            m = b.target.module
            names = ("running_mean", "running_var", "weight", "bias", "eps")
            return None if m.training or m.running_mean is None else {k: getattr(m, k) for k in names}
        args = b.normalized_arguments(self.owner, normalize_to_only_use_kwargs=True)
        bn = {} if args is None else dict(args.kwargs)
        if not bn or bn.get("training", bn.get("train")):
            return None
        nodes = [bn["running_mean"], bn["running_var"], bn.get("weight"), bn.get("bias")]
        if None in nodes[:2] or not all(v is None or self._is_weight(v) for v in nodes):
            return None
        return {**bn, **{k: None if v is None else self.values[v]
                         for k, v in zip(("running_mean", "running_var", "weight", "bias"), nodes)}}

    def _conv_state(self, c: Node) -> tuple[torch.Tensor, torch.Tensor | None, bool] | None:
        """(weight, bias, transposed) of a conv or linear a batch norm may fold into, else None."""
        if isinstance(c.target, _ModuleCall):
            m = c.target.module
            transposed, groups = isinstance(m, torch.nn.modules.conv._ConvTransposeNd), getattr(m, "groups", 1)
            w, b = m.weight, m.bias
        else:
            transposed = _transposed(c)
            groups = _arg(c, 6, "groups", 1) if "transpose" in _canon(c) else _arg(c, 8, "groups", 1)
            wn, bn = _arg(c, 1, "weight"), _arg(c, 2, "bias")
            if not self._is_weight(wn) or not (bn is None or self._is_weight(bn)) or \
                    any(v is not None and len(v.users) != 1 for v in (wn, bn)):
                return None
            w, b = self.values[wn], None if bn is None else self.values[bn]
        if (transposed and groups != 1) or (_canon(c) == "linear" and len(self.meta[c].shape) != 2):
            return None
        return w, b, transposed

    def _is_weight(self, v: Any) -> bool:
        return isinstance(v, Node) and isinstance(self.values.get(v), torch.Tensor)

    # 4. what each node becomes ------------------------------------------------------------
    def classify(self, outputs: list[Node]) -> list[Node]:
        """Sets kind (and root, values) for every node by the rules of the module docstring, step 4,
        merging each node that computes what an earlier one does into it; returns `outputs` merged."""
        inputs, seen, same = set(self.inputs), {}, {}
        for n in list(self.g.nodes):
            if n.op in ("placeholder", "get_attr"):
                self.kind[n] = "input" if n in inputs else "const"
            if n.op in ("output", "placeholder", "get_attr"):
                continue
            key = None if _random(n) else self._key(n)
            if key is not None and key in seen:
                same[n] = seen[key]
                n.replace_all_uses_with(seen[key])
                self.kind[n] = "merged"
            elif _canon(n) in DATA_DEPENDENT:
                raise UnsupportedModel(f"{self.name}: {n.name!r} ({_type(n)}) has a data-dependent result;"
                                       " the planner needs static shapes")
            elif not _has_tensor(self.meta.get(n)):
                self.kind[n], self.values[n] = "const", self.meta.get(n)  # sizes, dtypes, None
            elif self._is_view(n):
                src = _data_arg(n)
                self.kind[n], self.root[n] = "view", self.root.get(src, src)  # type: ignore[arg-type]
            elif all(self.kind[self.root.get(a, a)] == "const" for a in n.all_input_nodes) and not _random(n):
                self.kind[n], self.values[n] = "const", self._evaluate(n)
            elif n.target is operator.getitem and not isinstance(self.meta[n.args[0]], _Meta):  # type: ignore[index]
                self.kind[n] = "item"
            else:
                self.kind[n] = "op"
            if key is not None and n not in same:
                seen[key] = n
        return [same.get(o, o) for o in outputs]

    def _key(self, n: Node) -> Any:
        """What `n` computes, as a hashable key (None when unhashable): its target and arguments,
        small constant tensors by value, as the ONNX exporter's optimizer compares them."""
        def arg(a: Any) -> Any:
            if isinstance(a, Node):
                v = self.values.get(a) if self.kind.get(a) == "const" else None
                if isinstance(v, torch.Tensor) and v.numel() <= SMALL:
                    return ("value", v.dtype, tuple(v.shape), tuple(v.flatten().tolist()))
                return a
            if isinstance(a, (list, tuple)):
                return (type(a).__name__, *map(arg, a))
            if isinstance(a, dict):
                return tuple(sorted((k, arg(v)) for k, v in a.items()))
            if isinstance(a, slice):
                return ("slice", arg(a.start), arg(a.stop), arg(a.step))
            return a
        key = (n.op, n.target, arg(n.args), arg(n.kwargs))
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def _is_view(self, n: Node) -> bool:
        """Folded views (DESIGN §3): a copy or reshape of its first argument, same dtype, same
        elements in row-major order, reading no other tensor (but the shape of view_as's)."""
        name, src = _canon(n), _data_arg(n)
        if name not in VIEWS | DROPOUTS | NO_OP_MOVES or src is None:
            return False
        out = self.meta.get(n)
        into = self.meta.get(src)
        if not isinstance(out, _Meta) or not isinstance(into, _Meta) or \
                (out.dtype, out.numel) != (into.dtype, into.numel):
            return False
        others = [a for a in n.all_input_nodes if a is not src and isinstance(self.meta.get(a), _Meta)]
        if others and not name.endswith("_as"):  # view_as and friends read the other only for its shape
            return False
        if any(isinstance(v, (torch.device, str)) for v in (*n.args, *n.kwargs.values())):
            return False  # a device move, or a type given by name
        if name in DROPOUTS:
            train = n.target.module.training if isinstance(n.target, _ModuleCall) else \
                _arg(n, 2, "training", n.kwargs.get("train", True))
            return not train or _arg(n, 1, "p") == 0
        return name not in NO_OP_MOVES or out.shape == into.shape

    def _evaluate(self, n: Node) -> Any:
        """Runs a node all of whose inputs are constants."""
        def value(a: Node) -> Any:
            return self.values[self.root[a]].reshape(self.meta[a].shape) if a in self.root else self.values[a]
        args, kwargs = map_arg((n.args, n.kwargs), value)
        try:
            with torch.no_grad():
                return _callable(n)(*args, **kwargs)
        except Exception as e:
            raise UnsupportedModel(f"{self.name}: cannot fold constant {n.name!r} ({_type(n)}):"
                                   f" {_first_line(e)}") from e

    # 5. live ops --------------------------------------------------------------------------
    def live(self, outputs: list[Node]) -> list[Node]:
        """The nodes some output depends on, in graph order; raises for an output no op computes."""
        for o in outputs:
            root = self.root.get(o, o)
            if self.kind[root] in ("input", "const"):
                what = "the graph input" if self.kind[root] == "input" else "the weight or constant"
                raise UnsupportedModel(f"{self.name}: output {o.name!r} is {what} {root.name!r} (or a view of it);"
                                       " no op computes it, so there is nothing to plan")
        stack = list(outputs)
        while stack:
            n = stack.pop()
            if n not in self.alive:
                self.alive.add(n)
                if self.kind[n] != "const":
                    stack.extend(n.all_input_nodes)
        return [n for n in self.g.nodes if n in self.alive]

    def group(self, live: list[Node]) -> list[_Group]:
        """One group per live op: the op node, then the getitem nodes that pick its outputs."""
        groups: dict[Node, _Group] = {}
        for n in live:
            if self.kind[n] == "op":
                if not isinstance(self.meta[n], _Meta):
                    whole = [u for u in n.users if u in self.alive and u.target is not operator.getitem]
                    if whole:
                        raise UnsupportedModel(f"{self.name}: {whole[0].name!r} reads the whole tuple {n.name!r};"
                                               " only getitem of a multi-output op can be lowered")
                groups[n] = _Group([n], [n] if isinstance(self.meta[n], _Meta) else [], self.label.get(n, _type(n)))
            elif self.kind[n] == "item":
                groups[n.args[0]].nodes.append(n)  # type: ignore[index]
                groups[n.args[0]].outputs.append(n)  # type: ignore[index]
        return list(groups.values())

    # 6. fusion ----------------------------------------------------------------------------
    def fuse(self, groups: list[_Group], outputs: list[Node]) -> list[_Group]:
        """Folds epilogues into the conv/linear/matmul that feeds them: the ONNX frontend's rule.

        Group E fuses into group P when
          - E is an eval-mode batch norm, an activation in ACTIVATIONS, or add/sub/mul/div by a
            weight or a number that keeps x's shape (x first for sub and div);
          - E has one output and reads exactly one tensor x that is not a weight;
          - P wrote x, P's first node is in ANCHORS, and x has no other reader, is not (the base
            of) a graph output, and its only views are same-shape ones E reads.
        P keeps its name and place; its type becomes e.g. "aten.conv2d+aten.relu" and it writes
        E's output. Walking the groups in order fuses chains (conv -> batch norm -> relu).
        """
        pinned = {self.root.get(o, o) for o in outputs}
        producer = {o: grp for grp in groups for o in grp.outputs}
        readers: dict[Node, list[_Group]] = {}
        for grp in groups:
            for x in self._reads(grp):
                readers.setdefault(x, []).append(grp)
        views: dict[Node, list[Node]] = {}
        for v, r in self.root.items():
            if v in self.alive:
                views.setdefault(r, []).append(v)
        kept = []
        for e in groups:
            x = self._epilogue_of(e)
            p = producer.get(x) if x is not None else None
            if p is None or _canon(p.nodes[0]) not in ANCHORS or readers.get(x) != [e] or x in pinned or \
                    not all(self.meta[v].shape == self.meta[x].shape and
                            all(u in e.nodes or u in views[x] for u in v.users if u in self.alive)
                            for v in views.get(x, [])):
                kept.append(e)
                continue
            p.nodes += e.nodes
            p.outputs = [e.outputs[0] if o is x else o for o in p.outputs]
            p.type += "+" + e.type
            producer[e.outputs[0]] = p
            for y in self._reads(e):
                readers[y] = [p if r is e else r for r in readers[y]]
        return kept

    def _reads(self, grp: _Group) -> list[Node]:
        """The nodes holding the tensors `grp` reads from outside itself (views resolved), in order."""
        inside, found = set(grp.nodes), []
        for n in grp.nodes:
            for a in n.all_input_nodes:
                r = self.root.get(a, a)
                if r not in inside and isinstance(self.meta.get(r), _Meta):
                    found.append(r)
        return list(dict.fromkeys(found))

    def _epilogue_of(self, e: _Group) -> Node | None:
        """x when group `e` is an epilogue of x (see `fuse`), else None."""
        n, name = e.nodes[0], _canon(e.nodes[0])
        main = [r for r in self._reads(e) if self.kind[r] != "const"]
        if len(e.outputs) != 1 or len(main) != 1 or not n.args:
            return None
        x, first = main[0], n.args[0]
        first_is_x = isinstance(first, Node) and self.root.get(first, first) is x
        if name in ACTIVATIONS or name in BATCH_NORMS and not self._training_bn(n):
            return x if first_is_x else None
        if name in AFFINE and len(n.args) >= 2 and self.meta[e.outputs[0]].shape == self.meta[x].shape:
            other = [a for a in n.args[:2] if not (isinstance(a, Node) and self.root.get(a, a) is x)]
            if len(other) == 1 and (name in ("add", "mul") or first_is_x):
                return x
        return None

    def _training_bn(self, n: Node) -> bool:
        if isinstance(n.target, _ModuleCall):
            return n.target.module.training
        args = n.normalized_arguments(self.owner, normalize_to_only_use_kwargs=True)
        return args is None or bool(args.kwargs.get("training", args.kwargs.get("train", False)))

    # 7. the planner graph -----------------------------------------------------------------
    def emit(self, groups: list[_Group], outputs: list[Node]) -> Lowered:
        """Builds tensors, ops (with fn and flops), views and weights, then lints."""
        tensors = {n.name: self._tensor(n, "input", None) for n in self.inputs}
        weights: dict[str, torch.Tensor] = {}
        ops, view_readers = [], {}
        for grp in groups:
            ins = self._reads(grp)
            op = Op(grp.nodes[0].name, grp.type, [r.name for r in ins], [o.name for o in grp.outputs],
                    sum(self._flops(n) for n in grp.nodes), self._fn(grp, ins))
            for r in ins:
                if r.name not in tensors:
                    tensors[r.name], weights[r.name] = self._tensor(r, "weight", None), self.values[r]
                tensors[r.name].consumers.append(op.name)
            for o in grp.outputs:
                tensors[o.name] = self._tensor(o, "activation", op.name)
            for a in dict.fromkeys(a for n in grp.nodes for a in n.all_input_nodes if a in self.root):
                view_readers.setdefault(a, []).append(op.name)
            ops.append(op)
        for o in outputs:
            tensors[self.root.get(o, o).name].kind = "output"
        views = {}
        for v, r in self.root.items():
            if r.name in tensors and (v in view_readers or v in outputs):
                base = tensors[r.name]
                views[v.name] = dataclasses.replace(self._tensor(v, base.kind, base.producer), alias=r.name,
                                                    consumers=view_readers.get(v, []))
        out_names = [o.name for o in outputs]
        graph = Graph(self.name, tensors, ops, [n.name for n in self.inputs], list(dict.fromkeys(out_names)), views)
        try:
            graph.lint()
        except GraphError as e:
            raise UnsupportedModel(f"{self.name} lowers to an invalid graph: {e}") from e
        return Lowered(graph, weights, out_names)

    def _tensor(self, n: Node, kind: str, producer: str | None) -> Tensor:
        m = self.meta[n]
        if m.numel == 0:
            raise BadInput(f"{self.name}: tensor {n.name!r} is empty (shape {m.shape}); the planner needs"
                           " non-empty tensors")
        return Tensor(n.name, m.shape, str(m.dtype).removeprefix("torch."), m.numel * m.dtype.itemsize, kind,
                      producer)

    def _fn(self, grp: _Group, ins: list[Node]) -> Callable[..., tuple]:
        """The op's callable: runs the group's nodes in order on the op's input values."""
        slot = {r: k for k, r in enumerate(ins)}
        step = {n: k for k, n in enumerate(grp.nodes)}

        def ref(a: Node) -> Any:
            r = self.root.get(a, a)
            shape = self.meta[a].shape if a in self.root else None
            if r in step:
                return _Ref(step[r], True, shape)
            if r in slot:
                return _Ref(slot[r], False, shape)
            return self.values[r]  # a constant that is not a tensor
        steps = []
        for k, n in enumerate(grp.nodes):
            args, kwargs = map_arg((n.args, n.kwargs), ref)
            twin = self._in_place(n, args, kwargs) if k else None  # memory only: a fused epilogue writes
            steps.append(twin if twin is not None else (_callable(n), (args, kwargs)))  # over its intermediate
        return functools.partial(_run_steps, steps, [step[o] for o in grp.outputs])

    def _in_place(self, n: Node, args: tuple, kwargs: dict) -> tuple[Callable[..., Any], tuple] | None:
        """(callable, (args, kwargs)) running a fused activation or affine epilogue in place on its
        first argument, the group's intermediate (read by nothing else, as `fuse` checks); else None."""
        first = args[0] if args else None
        if _canon(n) not in ACTIVATIONS | AFFINE or not isinstance(first, _Ref) or not first.step \
                or first.shape is not None:
            return None
        if self.meta[n].dtype != self.meta[self.root.get(n.args[0], n.args[0])].dtype:  # type: ignore[arg-type]
            return None  # type promotion: the result does not fit in the intermediate
        t = n.target
        if isinstance(t, torch._ops.OpOverload):
            packet = getattr(getattr(torch.ops, t.namespace), t.overloadpacket.__name__ + "_", None)
            twin = getattr(packet, t._overloadname, None)
            return None if twin is None else (twin, (args, kwargs))
        if n.op == "call_method":
            return (_Method(t + "_"), (args, kwargs)) if hasattr(torch.Tensor, t + "_") else None  # type: ignore
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

    def _flops(self, n: Node) -> int:
        """Multiply and add count 2; about numel for elementwise ops; 0 for data movement."""
        name, out = _canon(n), self.meta[n]
        if n.target is operator.getitem or name in MOVES:
            return 0
        outs = [out] if isinstance(out, _Meta) else [m for m in out if isinstance(m, _Meta)]
        numel = sum(m.numel for m in outs)
        shapes = [self.meta[a].shape for a in n.args if isinstance(a, Node) and isinstance(self.meta.get(a), _Meta)]
        if isinstance(n.target, _ModuleCall) and name in ANCHORS:
            shapes = [shapes[0], tuple(n.target.module.weight.shape)]
        if name in ANCHORS and len(shapes) >= 2:
            if name == "linear":
                return 2 * numel * shapes[1][-1]
            if "conv" in name:
                return 2 * (math.prod(shapes[0]) if _transposed(n) else numel) * math.prod(shapes[1][1:])
            return 2 * numel * (shapes[1] if name in ("addmm", "baddbmm") else shapes[0])[-1]
        if name == "scaled_dot_product_attention" and len(shapes) >= 3:
            q, k, v = shapes[:3]
            scores = math.prod(q[:-1]) * k[-2]
            return 2 * scores * (q[-1] + v[-1]) + 5 * scores
        if "pool" in name and shapes:
            spatial = len(outs[0].shape) - 2
            if "adaptive" in name:
                return numel * math.prod(-(-i // o) for i, o in zip(shapes[0][-spatial:], outs[0].shape[-spatial:]))
            kernel = _arg(n, 1, "kernel_size", 1)
            return numel * math.prod([kernel] * spatial if isinstance(kernel, int) else kernel)
        if name in NORMS:
            return 5 * numel
        if name in BATCH_NORMS:
            return 2 * numel
        if name in REDUCTIONS and shapes:
            return math.prod(shapes[0])
        return numel


@dataclass
class _Group:
    """The fx nodes one planner Op stands for, in execution order, and the ones it outputs."""

    nodes: list[Node]
    outputs: list[Node]
    type: str


def _run_steps(steps: list[tuple[Callable[..., Any], tuple]], outs: list[int], *values: Any) -> tuple:
    """Runs a group's steps: each argument is a value, or a _Ref to an op input or an earlier step."""
    done: list[Any] = []

    def get(a: Any) -> Any:
        if not isinstance(a, _Ref):
            return a
        v = done[a.index] if a.step else values[a.index]
        return v if a.shape is None else v.reshape(a.shape)
    for fn, (args, kwargs) in steps:
        done.append(fn(*map_aggregate(args, get), **map_aggregate(kwargs, get)))
    return tuple(done[k] for k in outs)
