"""The ONNX frontend: the onnx wheel's light models, dynamo exports, folding, fusion, errors."""
from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from planner.frontends.onnx import load_onnx
from planner.errors import BadInput, UnsupportedModel
from planner.ir import TARGETS
from planner.problem import Problem

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
# model -> (ops with fuse=True, ops with fuse=False, M_R at cosma-int8 with fuse=True). Op counts: every
# node but ConstantOfShape and views, less the fused epilogues.
LIGHT_FIGURES = {
    "bvlc_alexnet": (14, 21, 559872), "densenet121": (432, 668, 1605632), "inception_v1": (84, 141, 1161600),
    "inception_v2": (94, 370, 1003520), "resnet50": (89, 175, 2408448), "shufflenet": (104, 170, 702464),
    "squeezenet": (39, 65, 982144), "vgg19": (25, 43, 6422528), "zfnet512": (14, 21, 2281184),
}
vi = h.make_tensor_value_info


def light(name: str) -> str:
    return os.path.join(LIGHT, f"light_{name}.onnx")


def model(nodes, inputs, outputs, inits=(), opset=17, **kw) -> onnx.ModelProto:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], **kw)


def arr(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return nh.from_array(np.asarray(value, dtype=dtype), name)


def conv_bn_relu() -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Relu -> y, 1x4x8x8 -> 1x6x8x8."""
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
             h.make_node("Relu", ["n"], ["y"], name="relu")]
    inits = [arr("w", np.ones((6, 4, 3, 3))), *(arr(k, np.ones(6)) for k in "sbmv")]
    return model(nodes, [vi("x", T.FLOAT, [1, 4, 8, 8])], [vi("y", T.FLOAT, None)], inits)


def m_r(graph) -> int:
    p = Problem(graph, TARGETS["cosma-int8"])
    return max(p.footprint(op) for op in graph.ops)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("name", sorted(LIGHT_FIGURES))
def test_light_models_lower(name):
    fused, plain = load_onnx(light(name)), load_onnx(light(name), fuse=False)
    assert (len(fused.ops), len(plain.ops), m_r(fused)) == LIGHT_FIGURES[name]
    for g in (fused, plain):
        assert g.name  # the graph name stored in the file
        # Opset-9 files list their initializers among the graph inputs: those are weights.
        assert len(g.inputs) == 1 and g.tensors[g.inputs[0]].kind == "input"
        assert g.tensors[g.inputs[0]].shape == (1, 3, 224, 224)
        assert len(g.outputs) == 1 and g.tensors[g.base(g.outputs[0])].kind == "output"
        types = {t for op in g.ops for t in op.type.split("+")}
        assert not types & {"ConstantOfShape", "Reshape", "Flatten", "Dropout", "Unsqueeze"}
        assert all(t.kind == "weight" for t in g.tensors.values() if t.producer is None and t.name not in g.inputs)
    assert any("+" in op.type for op in fused.ops)
    assert not any("+" in op.type for op in plain.ops)
    assert sum(op.flops for op in fused.ops) == sum(op.flops for op in plain.ops)


def test_resnet50_figures():
    g = load_onnx(light("resnet50"))
    # M_R: the residual Sum of three 56x56x256 int8 tensors.
    assert m_r(g) == 3 * 802816
    types = collections.Counter(op.type for op in g.ops)
    assert types["Conv+BatchNormalization+Relu"] == 33 and types["Conv+BatchNormalization"] == 20
    assert types["Sum"] == 16
    assert 8.0e9 < sum(op.flops for op in g.ops) < 8.4e9  # 4.1 GMACs


def test_vgg19_weights_sized_not_materialised():
    g = load_onnx(light("vgg19"))
    weights = [t for t in g.tensors.values() if t.kind == "weight"]
    assert sum(t.numel for t in weights) == 143_667_240  # VGG-19's parameter count, ~575 MB of fp32
    assert sum(t.nbytes for t in weights) == 4 * 143_667_240
    assert 39.0e9 < sum(op.flops for op in g.ops) < 39.6e9  # 19.6 GMACs
    assert m_r(g) == 2 * 64 * 224 * 224  # conv1_2: 64x224x224 in and out


@pytest.fixture(scope="module")
def dynamo_models(tmp_path_factory):
    import torch

    nn = torch.nn

    class Block(nn.Module):  # LayerNorm, matmul, softmax, reshape/transpose
        def __init__(self, d=32, heads=4):
            super().__init__()
            self.ln, self.qkv, self.out, self.heads = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d), heads

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln(x)).split(d, -1))
            a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
            return x + self.out((a @ v).transpose(1, 2).reshape(b, t, d))

    class Residual(nn.Module):  # conv-bn-relu twice with a skip, then flatten + linear
        def __init__(self):
            super().__init__()
            self.c1, self.b1, self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), \
                nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            y = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
            return self.fc(y.flatten(1))

    out = tmp_path_factory.mktemp("dynamo")
    paths = {key: str(out / f"{key}.onnx") for key in ("block", "residual")}
    # The block's batch is dynamic: the export computes its reshape targets with Shape/Gather/Concat.
    torch.onnx.export(Block().eval(), (torch.randn(2, 16, 32),), paths["block"], dynamo=True, verbose=False,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2, max=64)}})
    torch.onnx.export(Residual().eval(), (torch.randn(1, 8, 8, 8),), paths["residual"], dynamo=True, verbose=False)
    return paths


def test_dynamo_transformer_block(dynamo_models):
    with pytest.raises(BadInput) as e:
        load_onnx(dynamo_models["block"])
    assert one_line(e).startswith("input 'x' has dynamic dimension 'batch' in shape batch x 16 x 32;")
    g = load_onnx(dynamo_models["block"], shapes={"x": (2, 16, 32)})
    types = {op.type for op in g.ops}
    assert {"LayerNormalization", "Softmax", "Transpose"} <= types and "MatMul+Add" in types
    assert not types & {"Reshape", "Flatten"}
    assert g.views and all(g.base(v) in g.tensors for v in g.views)
    assert g.tensors[g.inputs[0]].shape == (2, 16, 32)
    assert g.tensors[g.base(g.outputs[0])].kind == "output"
    # Q @ K^T per head: 2 batches x 4 heads x 16x16 outputs x 8-long dot products, x2 for mul+add
    assert any(op.flops >= 2 * 2 * 4 * 16 * 16 * 8 for op in g.ops if op.type.startswith("MatMul"))


def test_dynamo_residual(dynamo_models):
    fused, plain = load_onnx(dynamo_models["residual"]), load_onnx(dynamo_models["residual"], fuse=False)
    assert "Conv+Relu" in {op.type for op in fused.ops}
    assert len(fused.ops) < len(plain.ops)
    assert "Reshape" not in {op.type for op in plain.ops} and plain.views


def test_fusion_conv_bn_relu():
    fused, plain = load_onnx(conv_bn_relu()), load_onnx(conv_bn_relu(), fuse=False)
    assert [op.type for op in plain.ops] == ["Conv", "BatchNormalization", "Relu"]
    (op,) = fused.ops
    assert (op.name, op.type) == ("conv", "Conv+BatchNormalization+Relu")
    assert op.inputs == ["x", "w", "s", "b", "m", "v"] and op.outputs == ["y"]
    conv = 2 * 6 * 8 * 8 * 4 * 9
    assert plain.ops[0].flops == conv and op.flops == sum(o.flops for o in plain.ops) > conv
    assert set(fused.tensors) == {"x", "w", "s", "b", "m", "v", "y"}
    assert fused.tensors["s"].consumers == ["conv"] and fused.tensors["y"].producer == "conv"


def test_no_fusion_when_conv_output_is_shared():
    m = conv_bn_relu()
    m.graph.output.append(vi("c", T.FLOAT, None))  # the conv output is also a graph output
    assert [op.type for op in load_onnx(m).ops] == ["Conv", "BatchNormalization", "Relu"]
    m = conv_bn_relu()
    m.graph.node.append(h.make_node("Sigmoid", ["c"], ["z"]))  # a second reader of the conv output
    m.graph.output.append(vi("z", T.FLOAT, None))
    assert [op.type for op in load_onnx(m).ops] == ["Conv", "BatchNormalization", "Relu", "Sigmoid"]


def test_silu_and_bias_fuse():
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "bias"], ["a"]),
             h.make_node("Sigmoid", ["a"], ["s"]), h.make_node("Mul", ["a", "s"], ["y"])]
    inits = [arr("w", np.ones((8, 5))), arr("bias", [1] * 5)]
    m = model(nodes, [vi("x", T.FLOAT, [4, 8])], [vi("y", T.FLOAT, None)], inits)
    (op,) = load_onnx(m).ops
    assert op.type == "MatMul+Add+Sigmoid+Mul" and op.inputs == ["x", "w", "bias"]


def test_views_fold_to_aliases():
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("Reshape", ["r", "shape"], ["v1"]),
             h.make_node("Flatten", ["v1"], ["v2"]), h.make_node("Dropout", ["v2"], ["d", "mask"]),
             h.make_node("MatMul", ["d", "w"], ["y"]), h.make_node("Unsqueeze", ["y", "axes"], ["out"])]
    inits = [arr("shape", [2, 12], np.int64), arr("w", np.ones((12, 3))), arr("axes", [0], np.int64)]
    g = load_onnx(model(nodes, [vi("x", T.FLOAT, [2, 3, 4])], [vi("out", T.FLOAT, None)], inits))
    assert [(op.type, op.inputs, op.outputs) for op in g.ops] == [("Relu", ["x"], ["r"]),
                                                                   ("MatMul", ["r", "w"], ["y"])]
    assert {n: v.alias for n, v in g.views.items()} == {"v1": "r", "v2": "v1", "d": "v2", "out": "y"}
    assert g.base("d") == "r" and g.views["d"].shape == (2, 12) and g.views["d"].consumers == ["MatMul_4"]
    assert g.outputs == ["out"] and g.tensors["y"].kind == "output" and g.views["out"].shape == (1, 2, 3)
    assert "mask" not in g.tensors


def test_identity_of_input_as_output_stays_an_op():
    g = load_onnx(model([h.make_node("Identity", ["x"], ["y"])], [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, None)]))
    assert [(op.type, op.inputs, op.outputs) for op in g.ops] == [("Identity", ["x"], ["y"])]


def test_view_of_weight():
    nodes = [h.make_node("Unsqueeze", ["scale", "axes"], ["su"]), h.make_node("Mul", ["x", "su"], ["y"])]
    inits = [arr("scale", np.ones(3)), arr("axes", [1, 2], np.int64)]
    g = load_onnx(model(nodes, [vi("x", T.FLOAT, [1, 3, 4, 4])], [vi("y", T.FLOAT, None)], inits))
    assert g.ops[0].inputs == ["x", "scale"] and g.views["su"].alias == "scale"
    assert g.tensors["scale"].kind == "weight" and g.views["su"].shape == (3, 1, 1)


def test_shape_arithmetic_folds():
    # Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])): the flatten dynamo emits.
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("Shape", ["r"], ["s"]),
             h.make_node("Gather", ["s", "zero"], ["b"], axis=0), h.make_node("Unsqueeze", ["b", "axes"], ["bu"]),
             h.make_node("Concat", ["bu", "minus1"], ["shape"], axis=0), h.make_node("Reshape", ["r", "shape"], ["f"]),
             h.make_node("MatMul", ["f", "w"], ["y"])]
    inits = [arr("zero", 0, np.int64), arr("axes", [0], np.int64), arr("minus1", [-1], np.int64),
             arr("w", np.ones((48, 5)))]
    m = model(nodes, [vi("x", T.FLOAT, ["batch", 3, 4, 4])], [vi("y", T.FLOAT, None)], inits)
    with pytest.raises(BadInput) as e:
        load_onnx(m)
    assert one_line(e) == ("input 'x' has dynamic dimension 'batch' in shape batch x 3 x 4 x 4;"
                           " give it a value with --shape x=1x3x4x4")
    g = load_onnx(m, shapes={"x": (2, 3, 4, 4)})
    assert [op.type for op in g.ops] == ["Relu", "MatMul"]
    assert g.views["f"].shape == (2, 48) and g.tensors["y"].shape == (2, 5)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # the caller's model is untouched


def test_folded_values_feed_shape_inference():
    # ONNX data propagation stops at Range; the folded value resolves the Reshape target.
    nodes = [h.make_node("Range", ["start", "limit", "delta"], ["shape"]),
             h.make_node("Reshape", ["x", "shape"], ["v"]), h.make_node("Relu", ["v"], ["y"])]
    inits = [arr("start", 2, np.int64), arr("limit", 4, np.int64), arr("delta", 1, np.int64)]
    g = load_onnx(model(nodes, [vi("x", T.FLOAT, [6])], [vi("y", T.FLOAT, None)], inits))
    assert g.tensors["y"].shape == (2, 3) and g.views["v"].alias == "x"
    assert [op.name for op in g.ops] == ["Relu_2"]  # fallback names count the file's nodes, folded ones too


def test_big_constant_keeps_shape_only():
    # 4000 x 4000 fills (64 MB) become a sized weight; nothing that large is evaluated.
    nodes = [h.make_node("ConstantOfShape", ["dims"], ["w"], value=arr("", [0.5])),
             h.make_node("MatMul", ["x", "w"], ["y"])]
    g = load_onnx(model(nodes, [vi("x", T.FLOAT, [2, 4000])], [vi("y", T.FLOAT, None)],
                        [arr("dims", [4000, 4000], np.int64)]))
    assert g.tensors["w"].kind == "weight" and g.tensors["w"].nbytes == 4000 * 4000 * 4
    assert g.ops[0].flops == 2 * 2 * 4000 * 4000


def test_dead_code_and_empty_tensors():
    nodes = [h.make_node("Slice", ["x", "s", "e"], ["empty"]), h.make_node("Relu", ["empty"], ["dead"]),
             h.make_node("Relu", ["x"], ["y"])]
    inits = [arr("s", [0], np.int64), arr("e", [0], np.int64)]
    g = load_onnx(model(nodes, [vi("x", T.FLOAT, [2, 8])], [vi("y", T.FLOAT, None)], inits))
    assert [op.type for op in g.ops] == ["Relu"] and "empty" not in g.tensors
    m = model(nodes, [vi("x", T.FLOAT, [2, 8])], [vi("dead", T.FLOAT, None)], inits)
    with pytest.raises(BadInput, match="'empty'.*zero elements") as e:
        load_onnx(m)
    one_line(e)


def test_op_names_unique_and_non_empty():
    nodes = [h.make_node("Relu", ["x"], ["a"]), h.make_node("Relu", ["a"], ["b"], name="n"),
             h.make_node("Relu", ["b"], ["y"], name="n")]
    g = load_onnx(model(nodes, [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, None)]), name="chain")
    assert [op.name for op in g.ops] == ["Relu_0", "n", "Relu_2"] and g.name == "chain"


def test_external_data_without_its_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(conv_bn_relu(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    os.remove(tmp_path / "m.onnx.data")
    g = load_onnx(path)
    assert g.name == "g" and g.tensors["w"].nbytes == 6 * 4 * 9 * 4
    assert [op.type for op in g.ops] == ["Conv+BatchNormalization+Relu"]


def test_external_reshape_target(tmp_path):
    # A small external initializer is read back when its file exists: Reshape needs its value.
    nodes = [h.make_node("Reshape", ["x", "shape"], ["v"]), h.make_node("Relu", ["v"], ["y"])]
    m = model(nodes, [vi("x", T.FLOAT, [2, 3, 4])], [vi("y", T.FLOAT, None)], [arr("shape", [2, 12], np.int64)])
    onnx.save_model(m, str(tmp_path / "r.onnx"), save_as_external_data=True, location="r.data", size_threshold=0)
    assert load_onnx(tmp_path / "r.onnx").tensors["y"].shape == (2, 12)
    os.remove(tmp_path / "r.data")
    with pytest.raises(BadInput, match=r"'v' \(made by node 'Reshape_0'\) has no static shape") as e:
        load_onnx(tmp_path / "r.onnx")
    one_line(e)


def test_file_name_is_the_default_name(tmp_path):
    m = conv_bn_relu()
    m.graph.name = ""
    onnx.save_model(m, str(tmp_path / "tiny.onnx"))
    assert load_onnx(tmp_path / "tiny.onnx").name == "tiny"


@pytest.mark.parametrize("content", ["truncated", "garbage", "text"])
def test_malformed_files(tmp_path, content):
    real = open(light("resnet50"), "rb").read()
    data = {"truncated": real[: len(real) // 2], "garbage": bytes(range(256)) * 8,
            "text": b"this is not a model\n"}[content]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(BadInput) as e:
        load_onnx(path)
    assert "bad.onnx" in one_line(e)


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="no such file") as e:
        load_onnx(tmp_path / "nope.onnx")
    assert "nope.onnx" in one_line(e)


def test_unknown_ops_named_at_once():
    nodes = [h.make_node("Foo", ["x"], ["a"], domain="com.acme", name="foo0"), h.make_node("Gelu", ["a"], ["b"]),
             h.make_node("Relu", ["b"], ["y"])]
    m = h.make_model(h.make_graph(nodes, "g", [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, None)]),
                     opset_imports=[h.make_opsetid("", 13), h.make_opsetid("com.acme", 1)])
    with pytest.raises(UnsupportedModel) as e:
        load_onnx(m)
    msg = one_line(e)
    assert "com.acme.Foo" in msg and "Gelu" in msg and "'foo0'" in msg  # Gelu is standard only from opset 20
    m.opset_import[0].version = 20
    with pytest.raises(UnsupportedModel) as e:
        load_onnx(m)
    assert "Gelu" not in one_line(e)


def test_control_flow_is_unsupported():
    branch = h.make_graph([h.make_node("Identity", ["x"], ["o"])], "b", [], [vi("o", T.FLOAT, [2])])
    nodes = [h.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch, name="if0")]
    m = model(nodes, [vi("x", T.FLOAT, [2]), vi("c", T.BOOL, [])], [vi("y", T.FLOAT, None)])
    with pytest.raises(UnsupportedModel) as e:
        load_onnx(m)
    assert "If" in one_line(e) and "'if0'" in one_line(e)


def test_bad_shapes_argument():
    with pytest.raises(BadInput, match="'q', which is not a graph input"):
        load_onnx(conv_bn_relu(), shapes={"q": (1,)})
    with pytest.raises(BadInput, match="rank 3"):
        load_onnx(conv_bn_relu(), shapes={"x": (1, 4, 8)})


@pytest.mark.parametrize("other, ok", [([1, 8, 1, 1], True), ([16], True), ([1, 3, 5, 7], False), ([4, 1, 1], False)])
def test_elementwise_shapes_must_broadcast(other, ok):
    """Issue 13 item 16: ONNX's non-strict inference let Add([1,8,16,16], [1,3,5,7]) through."""
    a = h.make_tensor_value_info("a", T.FLOAT, [1, 8, 16, 16])
    b = h.make_tensor_value_info("b", T.FLOAT, other)
    y = h.make_tensor_value_info("y", T.FLOAT, None)
    graph = h.make_graph([h.make_node("Add", ["a", "b"], ["y"], name="add")], "g", [a, b], [y])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    if ok:
        assert load_onnx(model).tensors["y"].shape == (1, 8, 16, 16)
    else:
        with pytest.raises(BadInput, match=r"node 'add' \(Add\): input shapes .* do not broadcast"):
            load_onnx(model)
