"""ONNX -> planner IR: a linted `Graph` of ops, the tensors they read and write, and bytes.

What happens, in the order the functions below run:

1. Read the file without its external data (weight sizes come from each initializer's dims
   and data_type, so a model whose .data file is missing still plans). Reject what cannot be
   planned, with one line: malformed files, control flow, ops outside the standard schema.
2. Give every graph input a static shape (`shapes` overrides) and run ONNX shape inference
   with data propagation.
3. Fold constants: a node whose inputs are all constants (initializers, Constant outputs,
   earlier folds), and Shape/Size of a statically shaped tensor, becomes a weight. Values
   are computed lazily and only up to `LIMIT` elements; larger ones keep shape and dtype
   (the onnx wheel's light models make ~500 MB of weights with ConstantOfShape). When some
   activation still has no static shape, small folded values become initializers and
   inference runs again, so Reshape/Expand targets computed from shapes resolve.
4. Fold views (DESIGN §3): Reshape, Flatten, Squeeze, Unsqueeze, Identity and Dropout
   become entries of `Graph.views` aliasing the tensor they view; ops read the base tensor.
5. Drop dead ops, count FLOPs, fuse epilogues (see `_fuse_epilogues`), link and lint.

Old models (IR < 4) list initializers among graph inputs: those are weights, not inputs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from planner.errors import BadInput, UnsupportedModel
from planner.ir import Graph, GraphError, Op, Tensor

LIMIT = 1_000_000  # elements: constants up to this size are evaluated, larger keep shape+dtype only
SMALL_EXTERNAL = 1024  # elements: external initializers up to this size are read when their file exists
ROUNDS = 4  # shape inference runs at most this often (each round may resolve more Reshape targets)
CONTROL_FLOW = {"If", "Loop", "Scan"}
VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
SAME_SHAPE = {"Identity", "Dropout"}  # views whose shape is their input's, where inference left none
PRODUCERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
ACTIVATIONS = {"BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh",
               "Elu", "Selu", "Softplus", "PRelu"}
AFFINE = {"Add", "Sub", "Mul", "Div"}  # epilogues only when the other operand is a weight (bias, scale)
MOVES = {"Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "ScatterND",
         "ScatterElements", "Pad", "Expand", "Tile", "Cast", "CastLike", "DepthToSpace", "SpaceToDepth",
         "ConstantOfShape", "Range", "Shape", "Size", "Trilu", "Compress", "OneHot"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "And", "Or", "Xor",
             "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "BitShift", "BitwiseAnd", "BitwiseOr",
             "BitwiseXor", "PRelu"}  # numpy-style multidirectional broadcasting (PRelu: slope to X)
POOLS = {"MaxPool", "AveragePool", "LpPool"}
NORMS = {"LayerNormalization", "InstanceNormalization", "GroupNormalization", "MeanVarianceNormalization",
         "Softmax", "LogSoftmax", "Hardmax"}  # about 5 passes over the output


def load_onnx(model: str | os.PathLike | onnx.ModelProto, *, shapes: dict[str, tuple[int, ...]] | None = None,
              fuse: bool = True, name: str | None = None) -> Graph:
    """Lowers an ONNX model to a linted planner Graph.

    Parameters
    ----------
    model : a path to an .onnx file, or a ModelProto (not modified).
    shapes : input name -> static shape; overrides the model's (needed for dynamic dims).
    fuse : fold BatchNormalization and activations into the Conv/Gemm/MatMul before them.
    name : Graph.name; default the model's graph name, else the file stem.

    Raises
    ------
    BadInput : unreadable or malformed file, dynamic shape without a value, bad `shapes`.
    UnsupportedModel : control flow, ops outside the standard ONNX schema, custom domains.
    """
    proto, stem = _read(model)
    name_nodes(proto)
    _check_ops(proto)
    _check_links(proto)
    _set_input_shapes(proto, shapes or {})
    consts = _fold_constants(proto)
    lowered = _Lowering(proto, consts)
    if fuse:
        _fuse_epilogues(lowered)
    graph = lowered.graph(name or proto.graph.name or stem)
    try:
        return graph.lint()
    except GraphError as e:
        raise BadInput(f"model lowers to an invalid graph: {e}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _read(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model as a private ModelProto (local functions inlined, big raw weights dropped) and a fallback name."""
    if isinstance(model, onnx.ModelProto):
        proto, stem, label = onnx.ModelProto(), "model", "model"
        proto.CopyFrom(model)
    else:
        path = Path(model)
        stem, label = path.stem, str(path)
        try:
            proto = onnx.load(path, load_external_data=False)
        except FileNotFoundError:
            raise BadInput(f"{label}: no such file") from None
        except OSError as e:
            raise BadInput(f"{label}: cannot read it ({e.strerror or _first_line(e)})") from None
        except Exception as e:  # protobuf DecodeError and friends: truncated or not ONNX at all
            raise BadInput(f"{label}: not a valid ONNX model, truncated or corrupt ({_first_line(e)})") from None
        for t in proto.graph.initializer:  # shape-like values (Reshape targets) are read back when they can be
            if t.data_location == TensorProto.EXTERNAL and math.prod(t.dims) <= SMALL_EXTERNAL:
                try:
                    onnx.external_data_helper.load_external_data_for_tensor(t, str(path.parent))
                    t.data_location = TensorProto.DEFAULT
                    del t.external_data[:]
                except Exception:  # a missing or short data file: keep dims and dtype only
                    pass
    if not proto.HasField("graph") or not proto.graph.output:
        raise BadInput(f"{label}: not an ONNX model (it has no graph outputs)")
    if proto.functions:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise BadInput(f"{label}: cannot inline its local functions ({_first_line(e)})") from None
    for s in proto.graph.sparse_initializer:  # sizes only: the planner never needs their values
        proto.graph.initializer.add(name=s.values.name, dims=s.dims, data_type=s.values.data_type,
                                    data_location=TensorProto.EXTERNAL)
    del proto.graph.sparse_initializer[:]
    for t in proto.graph.initializer:  # speed only: inference and copies never need big values
        if math.prod(t.dims) > LIMIT and t.data_location != TensorProto.EXTERNAL:
            for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(f)
            t.data_location = TensorProto.EXTERNAL
            t.external_data.add(key="location", value="(dropped by planner)")
    return proto, stem


def name_nodes(proto: onnx.ModelProto) -> None:
    """Gives every node a unique, non-empty name (op names): its own, else f"{op_type}_{index}"."""
    seen: set[str] = set()
    for k, n in enumerate(proto.graph.node):
        name = n.name if n.name and n.name not in seen else f"{n.op_type}_{k}"
        while name in seen:
            name += "_"
        seen.add(name)
        n.name = name


def _check_ops(proto: onnx.ModelProto) -> None:
    """Raises UnsupportedModel for control flow, and for all unknown op types at once."""
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    flow, unknown = {}, {}
    for n in proto.graph.node:
        domain = "" if n.domain == "ai.onnx" else n.domain
        if domain == "" and n.op_type in CONTROL_FLOW:
            flow.setdefault(n.op_type, n.name)
        elif not _is_standard(n.op_type, domain, opsets):
            unknown.setdefault(f"{domain}.{n.op_type}" if domain else n.op_type, n.name)
    if flow:
        raise UnsupportedModel(f"control flow is not supported: {', '.join(flow)} (node {next(iter(flow.values()))!r});"
                               " export with fixed control flow so the graph is straight-line")
    if unknown:
        raise UnsupportedModel(f"unknown op type(s) {', '.join(unknown)} (node {next(iter(unknown.values()))!r}); only"
                               f" standard ONNX ops at the model's opset {opsets.get('', '?')} can be planned")


def _is_standard(op_type: str, domain: str, opsets: dict[str, int]) -> bool:
    if domain not in ("", "ai.onnx.ml"):
        return False
    try:
        onnx.defs.get_schema(op_type, opsets.get(domain, onnx.defs.onnx_opset_version()), domain)
        return True
    except onnx.defs.SchemaError:
        return False


def _check_links(proto: onnx.ModelProto) -> None:
    """Every node reads only what an earlier node, an input or an initializer defines."""
    defined = {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer}
    for n in proto.graph.node:
        for i in n.input:
            if i and i not in defined:
                raise BadInput(f"node {n.name!r} reads {i!r}, which nothing before it defines"
                               " (unsorted or corrupt model)")
        defined.update(n.output)
    for out in proto.graph.output:
        if out.name not in defined:
            raise BadInput(f"graph output {out.name!r} is defined by no node, input or initializer")


def _set_input_shapes(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> None:
    """Applies `shapes`, then requires every real (non-initializer) input to be static."""
    weights = {t.name for t in proto.graph.initializer}
    inputs = {v.name: v for v in proto.graph.input if v.name not in weights}
    for n in shapes:
        if n not in inputs:
            raise BadInput(f"a shape is given for {n!r}, which is not a graph input; inputs: {', '.join(inputs)}")
    for n, v in inputs.items():
        if not v.type.HasField("tensor_type"):
            raise UnsupportedModel(f"input {n!r} is not a tensor ({v.type.WhichOneof('value')})")
        tt = v.type.tensor_type
        if n in shapes:
            given = tuple(int(d) for d in shapes[n])
            if tt.HasField("shape") and len(tt.shape.dim) != len(given):
                raise BadInput(f"shape {'x'.join(map(str, given))} for input {n!r} has rank {len(given)};"
                               f" the model declares rank {len(tt.shape.dim)}")
            tt.ClearField("shape")
            for d in given:
                tt.shape.dim.add(dim_value=d)
        dims = [d.dim_value if d.WhichOneof("value") == "dim_value" else (d.dim_param or "?") for d in tt.shape.dim]
        if not tt.HasField("shape"):
            raise BadInput(f"input {n!r} has no shape; give it one with --shape {n}=1x3x224x224")
        dynamic = [d for d in dims if isinstance(d, str)]
        if dynamic:
            shown, hint = " x ".join(map(str, dims)), "x".join(str(d if isinstance(d, int) else 1) for d in dims)
            raise BadInput(f"input {n!r} has dynamic dimension {dynamic[0]!r} in shape {shown};"
                           f" give it a value with --shape {n}={hint}")
        if 0 in dims:
            raise BadInput(f"input {n!r} has zero elements (shape {dims}); give it a non-empty shape")


def _infer(proto: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (static shape or None, ONNX elem type) after shape inference with data propagation."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise BadInput(f"ONNX shape inference failed: {_first_line(e)}") from None
    g = inferred.graph
    types: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for v in [*g.value_info, *g.output, *g.input]:
        if not v.type.HasField("tensor_type"):
            continue
        tt = v.type.tensor_type
        static = tt.HasField("shape") and all(d.WhichOneof("value") == "dim_value" for d in tt.shape.dim)
        shape = tuple(d.dim_value for d in tt.shape.dim) if static else None
        if shape is not None or v.name not in types:
            types[v.name] = (shape, tt.elem_type)
    for t in g.initializer:
        types[t.name] = (tuple(t.dims), t.data_type)
    return types


class _Constants:
    """Tensors whose values do not depend on the graph inputs, with lazily computed values.

    A value is computed only when asked for and only up to LIMIT elements; `value` returns
    None for bigger ones, for weights stored externally, and where evaluation fails.
    """

    def __init__(self, proto: onnx.ModelProto):
        self.opsets = list(proto.opset_import)
        self.init = {t.name: t for t in proto.graph.initializer}
        self.node_of: dict[str, onnx.NodeProto] = {}  # folded tensor -> the node that makes it
        self.values: dict[str, np.ndarray | None] = {}
        self.types: dict[str, tuple[tuple[int, ...] | None, int]] = {}  # latest inference

    def __contains__(self, name: str) -> bool:
        return name in self.init or name in self.node_of

    def try_fold(self, node: onnx.NodeProto) -> bool:
        """Records `node`'s outputs as constants if it folds; returns whether it did."""
        ins = [i for i in node.input if i]
        if node.op_type in ("Shape", "Size") and self.shape(ins[0]) is not None:
            shape = self.shape(ins[0])
            if node.op_type == "Size":
                self.values[node.output[0]] = np.array(math.prod(shape), dtype=np.int64)
            else:
                attrs = {a.name: a.i for a in node.attribute}
                self.values[node.output[0]] = np.array(shape[attrs.get("start", 0):attrs.get("end")], dtype=np.int64)
        elif not all(i in self for i in ins):
            return False
        for o in node.output:
            if o:
                self.node_of[o] = node
        return True

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Static shape from inference, else from the value or the rules inference lacks."""
        shape = self.types.get(name, (None, 0))[0]
        if shape is not None or name not in self:
            return shape
        if name in self.values and self.values[name] is not None:
            return tuple(self.values[name].shape)  # type: ignore[union-attr]
        node = self.node_of.get(name)
        if node is not None and node.op_type == "ConstantOfShape":  # never materialise big fills
            dims = self.value(node.input[0]) if node.input else np.zeros(0, np.int64)
            return None if dims is None else tuple(int(d) for d in dims)
        if node is not None and node.op_type == "Expand":
            a, target = self.shape(node.input[0]), self.value(node.input[1])
            try:
                return tuple(np.broadcast_shapes(a, tuple(target)))  # type: ignore[arg-type]
            except (TypeError, ValueError):  # unknown operand, or shapes that do not broadcast
                return None
        value = self.value(name)
        return None if value is None else tuple(value.shape)

    def dtype(self, name: str) -> int:
        """ONNX elem type; 0 when unknown."""
        if name in self.init:
            return self.init[name].data_type
        elem = self.types.get(name, (None, 0))[1]
        if not elem and self.values.get(name) is not None:  # e.g. a folded Shape inference never saw
            elem = helper.np_dtype_to_tensor_dtype(self.values[name].dtype)  # type: ignore[union-attr]
        return elem

    def value(self, name: str) -> np.ndarray | None:
        if name not in self.values:
            self.values[name] = None
            if name in self.init:
                t = self.init[name]
                if t.data_location != TensorProto.EXTERNAL and math.prod(t.dims) <= LIMIT:
                    try:
                        self.values[name] = numpy_helper.to_array(t)
                    except Exception:  # malformed data: the weight still has its dims
                        pass
            elif name in self.node_of:
                self._evaluate(self.node_of[name])
        return self.values[name]

    def _evaluate(self, node: onnx.NodeProto) -> None:
        """Runs one folded node with the reference evaluator when its inputs and outputs are small."""
        outs = [o for o in node.output if o]
        sizes = [self.shape(outs[0])] if node.op_type == "ConstantOfShape" else [self.types.get(o, (None, 0))[0]
                                                                                for o in outs]
        if any(s is not None and math.prod(s) > LIMIT for s in sizes):
            return
        feeds = {i: self.value(i) for i in node.input if i}
        if any(v is None for v in feeds.values()) or sum(v.size for v in feeds.values()) > LIMIT:  # type: ignore
            return
        graph = helper.make_graph([node], "fold", [helper.make_tensor_value_info(i, TensorProto.UNDEFINED, None)
                                                   for i in feeds], [helper.make_value_info(o, onnx.TypeProto())
                                                                     for o in outs])
        try:
            got = ReferenceEvaluator(helper.make_model(graph, opset_imports=self.opsets)).run(None, feeds)
        except Exception:  # an op the reference evaluator lacks: keep shape and dtype only
            return
        for o, v in zip(outs, got):
            self.values[o] = np.asarray(v)


def _fold_constants(proto: onnx.ModelProto) -> _Constants:
    """Infers shapes and folds constants until every activation is static or nothing changes."""
    consts = _Constants(proto)
    for _ in range(ROUNDS):
        for n, (shape, elem) in _infer(proto).items():  # a later round never forgets a static shape
            if shape is not None or n not in consts.types:
                consts.types[n] = (shape, elem)
        for node in proto.graph.node:
            if not all(o in consts for o in node.output if o):
                consts.try_fold(node)
        read = {i for n in proto.graph.node for i in n.input} | {v.name for v in proto.graph.output}
        unknown = [o for n in proto.graph.node for o in n.output
                   if o in read and o not in consts and consts.types.get(o, (None, 0))[0] is None]
        if not unknown or not _feed_back(proto, consts):
            break
    return consts


def _feed_back(proto: onnx.ModelProto, consts: _Constants) -> bool:
    """Replaces folded nodes whose values are known by initializers, so inference can read them."""
    keep, fed = [], False
    for node in proto.graph.node:
        outs = [o for o in node.output if o]
        if outs and all(o in consts.node_of for o in outs) and all(consts.value(o) is not None for o in outs):
            for o in outs:
                t = numpy_helper.from_array(consts.values[o], o)  # type: ignore[arg-type]
                proto.graph.initializer.append(t)
                if proto.ir_version < 4:  # IR 3 inference reads only initializers listed as inputs
                    proto.graph.input.append(helper.make_tensor_value_info(o, t.data_type, t.dims))
                consts.init[o] = t
            fed = True
        else:
            keep.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return fed


class _Lowering:
    """The IR under construction from the folded model: tensors, ops, views, graph outputs."""

    def __init__(self, proto: onnx.ModelProto, consts: _Constants):
        self.consts = consts
        self.tensors: dict[str, Tensor] = {}
        self.views: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.outputs = [v.name for v in proto.graph.output]
        self.inputs = [v.name for v in proto.graph.input if v.name not in consts]
        self.view_readers: dict[str, list[str]] = {}  # view -> ops that named it
        self.needed: set[str] = set()  # tensors read by live nodes, and graph outputs
        for n in self.inputs:
            self._add(n, "input")
        for node in self._live([n for n in proto.graph.node if not all(o in consts for o in n.output if o)]):
            if self._as_view(node):
                self._add_view(node, node.name)
            else:
                self._add_op(node)
        for out in self.outputs:
            base = self.tensors.get(self.base(out))
            if base is None or base.producer is None:
                raise BadInput(f"graph output {out!r} is not computed by any op (it is an input or a constant)")
            base.kind = "output"

    def _live(self, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        """Drops dead code: nodes none of whose outputs reaches a graph output."""
        self.needed, live = set(self.outputs), []
        for node in reversed(nodes):
            if any(o in self.needed for o in node.output):
                live.append(node)
                view = node.op_type in VIEWS and not any(o in self.needed for o in node.output[1:])
                self.needed.update(node.input[:1] if view else node.input)  # a view reads only its data
        return live[::-1]

    def _as_view(self, node: onnx.NodeProto) -> bool:
        """A view aliases its data input. Not when Dropout's mask is read, nor for a graph output
        whose base is not an activation: an op must write every graph output, so it stays a copy."""
        if node.op_type not in VIEWS or any(o in self.needed for o in node.output[1:]):
            return False
        base = self.tensors.get(self.base(node.input[0]))
        return node.output[0] not in self.outputs or (base is not None and base.producer is not None)

    def base(self, name: str) -> str:
        """The tensor holding `name`'s bytes (itself unless a view)."""
        while name in self.views:
            name = self.views[name].alias  # type: ignore[assignment]
        return name

    def _shape(self, name: str, node: str | None) -> tuple[int, ...]:
        shape = self.consts.shape(name)
        if shape is None:
            made = f" (made by node {node!r})" if node else ""
            raise BadInput(f"tensor {name!r}{made} has no static shape after shape inference;"
                           " give the inputs static shapes (--shape) or simplify the model")
        return shape

    def _tensor(self, name: str, kind: str, producer: str | None, like: str | None = None,
                made_by: str | None = None) -> Tensor:
        """A Tensor sized at its dtype; `like` lends shape and dtype where inference left none (Identity)."""
        shape = self.consts.shape(name)
        if shape is None and like is not None:
            shape = self.consts.shape(like)
        if shape is None:
            shape = self._shape(name, made_by or producer)
        elem = self.consts.dtype(name) or (self.consts.dtype(like) if like else 0)
        if elem in (TensorProto.UNDEFINED, TensorProto.STRING):
            raise UnsupportedModel(f"tensor {name!r} has element type {TensorProto.DataType.Name(elem)};"
                                   " only numeric tensors can be planned")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        return Tensor(name, shape, dtype.name, math.prod(shape) * dtype.itemsize, kind, producer)

    def _add(self, name: str, kind: str, producer: str | None = None) -> None:
        self.tensors[name] = self._tensor(name, kind, producer)

    def _add_view(self, node: onnx.NodeProto, made_by: str) -> None:
        name, of = node.output[0], node.input[0]
        like = of if node.op_type in SAME_SHAPE else None
        self.views[name] = self._tensor(name, "activation", None, like, made_by)
        self.views[name].alias = of

    def _operand(self, name: str) -> str | None:
        """The base tensor an op input names, creating weights on first use; None for an empty constant."""
        if name in self.views:
            return self._operand(self.views[name].alias)  # type: ignore[arg-type]
        if name in self.tensors:
            return name
        maker = self.consts.node_of.get(name)
        if maker is not None and maker.op_type in VIEWS and maker.input[0] in self.consts:  # a view of a weight
            base = self._operand(maker.input[0])
            if base is not None:
                self._add_view(maker, maker.name)
            return base
        if math.prod(self._shape(name, maker.name if maker else None)) == 0:
            return None  # e.g. an empty Resize roi: no bytes to plan
        self._add(name, "weight")
        return name

    def _check_broadcast(self, node: onnx.NodeProto) -> None:
        """Shape inference (not strict) lets an Add of [1,8,16,16] and [1,3,5,7] through with
        some output shape; such a model cannot run, so it is bad input, not a plan."""
        if node.op_type not in BROADCAST or any(a.name == "broadcast" for a in node.attribute):  # opset < 7
            return
        shapes = [self.consts.shape(i) for i in node.input if i]
        if any(s is None for s in shapes):
            return
        try:
            np.broadcast_shapes(*shapes)
        except ValueError:
            shown = " and ".join(f"[{','.join(map(str, s))}]" for s in shapes)
            raise BadInput(f"node {node.name!r} ({node.op_type}): input shapes {shown} do not broadcast") from None

    def _add_op(self, node: onnx.NodeProto) -> None:
        name = node.name
        self._check_broadcast(node)
        names = node.input[:1] if node.op_type in VIEWS else [i for i in node.input if i]  # a view kept as a copy
        for i in names:
            if i in self.views:
                self.view_readers.setdefault(i, []).append(name)
        operands = [b for b in map(self._operand, names) if b is not None]
        op = Op(name, node.op_type, list(dict.fromkeys(operands)), [], _flops(node, self.consts.shape))
        for o in dict.fromkeys(o for o in node.output if o):
            shape = self.consts.shape(o)
            if shape is None or math.prod(shape) == 0:
                if o not in self.needed:
                    continue  # an unused optional output we cannot size: nothing reads it
                if shape is not None:
                    raise BadInput(f"tensor {o!r} (made by node {name!r}) has zero elements; the planner needs"
                                   " non-empty tensors")
            self._add(o, "activation", name)
            op.outputs.append(o)
        self.ops.append(op)

    def graph(self, name: str) -> Graph:
        """Links producers and consumers (ops in order, distinct) and returns the Graph."""
        for t in self.tensors.values():
            t.consumers = []
        for op in self.ops:
            for i in op.inputs:
                self.tensors[i].consumers.append(op.name)
            for o in op.outputs:
                self.tensors[o].producer = op.name
        for v in self.views.values():
            base = self.tensors[self.base(v.name)]
            v.kind, v.producer, v.consumers = base.kind, base.producer, self.view_readers.get(v.name, [])
        return Graph(name, self.tensors, self.ops, self.inputs, self.outputs, self.views)


def _flops(node: onnx.NodeProto, shape: Callable[[str], tuple[int, ...] | None]) -> int:
    """FLOPs with multiply and add counted 2 each; about numel for elementwise and the like."""
    t, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = shape(node.output[0]) if node.output and node.output[0] else None
    first = shape(node.input[0]) if node.input and node.input[0] else None
    if out is None:
        return 0
    n = math.prod(out)
    w = shape(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if t in ("Conv", "ConvInteger") and w:
        return 2 * n * math.prod(w[1:])  # Cout*Hout*Wout per image x (Cin/group)*kernel
    if t == "ConvTranspose" and w:
        return 2 * n * (w[0] // attrs.get("group", 1)) * math.prod(w[2:])
    if t == "Gemm" and first:
        return 2 * n * first[0 if attrs.get("transA", 0) else 1]
    if t in ("MatMul", "MatMulInteger") and first:
        return 2 * n * first[-1]
    if t in POOLS:
        return n * math.prod(attrs.get("kernel_shape", [1]))
    if t in NORMS:
        return 5 * n
    if t == "BatchNormalization":
        return 2 * n  # a scale and a shift once folded
    if t == "LRN":
        return n * attrs.get("size", 1)
    if (t.startswith("Reduce") or t.startswith("Global") or t.startswith("Arg")) and first:
        return math.prod(first)
    return 0 if t in MOVES or t in VIEWS else n


def _fuse_epilogues(low: _Lowering) -> None:
    """Folds elementwise epilogues into the Conv/ConvTranspose/Gemm/MatMul that feeds them.

    Rule: op E fuses into op P when
      - E is BatchNormalization or an activation in ACTIVATIONS, or Add/Sub/Mul/Div by a weight
        (a bias or a scale) whose output has its input's shape, or Mul(x, Sigmoid(x)) (SiLU);
      - E has one output and exactly one non-weight input x (first, for Sub and Div);
      - P wrote x, P's type (before any earlier fusion) is in PRODUCERS, and x has no other
        reader, is not a graph output and no view aliases it.
    P keeps its name and place in the order; its type becomes e.g. "Conv+BatchNormalization+Relu",
    it gains E's weight inputs, writes E's output instead of x, and adds E's FLOPs. Walking ops in
    order fuses chains (Conv -> BN -> Relu). x disappears from the graph. E's other inputs are
    weights, so moving them up to P's place keeps the order topological.
    """
    ops = {op.name: op for op in low.ops}
    readers: dict[str, list[str]] = {}
    for op in low.ops:
        for i in op.inputs:
            readers.setdefault(i, []).append(op.name)
    pinned = {low.base(o) for o in low.outputs} | {low.base(v) for v in low.views}
    fused_into: dict[str, str] = {}
    for e in low.ops:
        found = _epilogue(low, e, ops, readers, pinned)
        if found is None:
            continue
        x, chain = found
        p = ops.get(low.tensors[x].producer or "")
        if p is None or p.type.split("+")[0] not in PRODUCERS or readers[x] != [c.name for c in chain]:
            continue
        inner = {x} | {c.outputs[0] for c in chain[:-1]}
        extra = [i for c in chain for i in c.inputs if i not in inner and i not in p.inputs]
        p.type += "".join("+" + c.type for c in chain)
        p.inputs += list(dict.fromkeys(extra))
        p.outputs = [e.outputs[0] if o == x else o for o in p.outputs]
        p.flops += sum(c.flops for c in chain)
        low.tensors[e.outputs[0]].producer = p.name
        for c in chain:
            fused_into[c.name] = p.name
            for i in c.inputs:
                readers[i] = list(dict.fromkeys(p.name if r == c.name else r for r in readers[i]))
            del ops[c.name]
        for t in inner:
            del low.tensors[t]
    low.ops = [op for op in low.ops if op.name in ops]
    for v, names in low.view_readers.items():
        low.view_readers[v] = list(dict.fromkeys(fused_into.get(r, r) for r in names))


def _epilogue(low: _Lowering, e: Op, ops: dict[str, Op], readers: dict[str, list[str]],
              pinned: set[str]) -> tuple[str, list[Op]] | None:
    """(x, the ops to fuse) when `e` is an epilogue of the tensor x, else None."""
    if e.name not in ops or len(e.outputs) != 1:
        return None
    main = [i for i in e.inputs if low.tensors[i].kind != "weight"]
    if len(main) == 1 and main[0] not in pinned:
        x = main[0]
        if e.type in ACTIVATIONS:
            return x, [e]
        if (e.type in AFFINE and len(e.inputs) > 1 and (e.type in ("Add", "Mul") or e.inputs[0] == x)
                and low.tensors[x].shape == low.tensors[e.outputs[0]].shape):
            return x, [e]
    if e.type == "Mul" and len(main) == 2:  # SiLU: x * Sigmoid(x)
        for s_out in main:
            s = ops.get(low.tensors[s_out].producer or "")
            if (s is not None and s.type == "Sigmoid" and set(main) == {s.inputs[0], s_out}
                    and readers[s_out] == [e.name] and not {s.inputs[0], s_out} & pinned):
                return s.inputs[0], [s, e]
    return None
