"""The model zoo: published parameter counts, and for every model a forward at its small
shape, an ONNX export, onnxruntime parity with torch eager, and the ONNX and fx frontends
agreeing on M_R and activation bytes. Each model is built and exported once per session
(tests/conftest.py), shared with test_zoo_nas.py."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from planner import models
from planner.frontends import fx as fx_frontend
from planner.frontends import onnx as onnx_frontend
from planner.models import ZOO
from planner.errors import BadInput
from planner.ir import TARGETS, Graph
from planner.problem import Problem

# NAS entries carry their papers' rounded counts (5.1M); models/nas checks those itself
EXACT = [n for n, e in ZOO.items() if e.params is not None and e.task != "nas"]


@pytest.mark.parametrize("name", EXACT)
def test_param_count_is_published(name):
    assert sum(p.numel() for p in ZOO[name].build().parameters()) == ZOO[name].params


@pytest.mark.parametrize("aux, params", [(True, 35_322_218), (False, 32_957_013)])
def test_fcn_params_with_and_without_aux(aux, params):
    from planner.models.segmentation import fcn_resnet50

    assert sum(p.numel() for p in fcn_resnet50(aux=aux).parameters()) == params


def test_get_unknown_lists_names():
    with pytest.raises(BadInput, match="resnet50.*vit_b_16|vit_b_16.*resnet50"):
        models.get("resnet51")


def test_example_inputs_are_deterministic_and_shaped():
    a, b = models.example_inputs("resnet50", batch=2, resolution=32), models.example_inputs("resnet50", batch=2,
                                                                                              resolution=32)
    assert a[0].shape == (2, 3, 32, 32) and torch.equal(a[0], b[0])
    assert [x.shape for x in models.example_inputs("transformer", resolution=16)] == [(1, 16, 512)] * 2
    assert models.example_inputs("r2plus1d_18", resolution=32)[0].shape == (1, 3, 16, 32, 32)
    tokens = models.example_inputs("gpt2", resolution=16)[0]
    assert tokens.shape == (1, 16) and tokens.dtype == torch.int64 and 0 <= tokens.min() <= tokens.max() < 50257


def test_builds_are_deterministic():
    a, b = ZOO["mobilenet_v2"].build(), ZOO["mobilenet_v2"].build()
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "nope"}, "unknown model"),
    ({"name": "resnet50", "batch": 0}, "batch"),
    ({"name": "resnet50", "resolution": -3}, "resolution"),
    ({"name": "resnet50", "path": "/nonexistent/dir/m.onnx"}, "writable"),
    ({"name": "vit_b_16", "resolution": 64}, "cannot run"),
])
def test_export_onnx_bad_args(tmp_path, kwargs, match):
    kwargs = {"path": tmp_path / "m.onnx", **kwargs}
    with pytest.raises(BadInput, match=match):
        models.export_onnx(**kwargs)


def test_export_onnx_writes_one_file(tmp_path):
    import onnx

    models.export_onnx("mobilenet_v2", tmp_path / "m.onnx", batch=2, resolution=32)
    m = onnx.load(tmp_path / "m.onnx")
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 32, 32]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def _flat(out) -> list[np.ndarray]:
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


@pytest.fixture(scope="module", params=list(ZOO))
def case(request, zoo_case):
    return zoo_case(request.param)


def test_forward_depends_on_input(case):
    # a model whose untrained activations vanish outputs its last bias whatever the input,
    # which would make every parity check below vacuous
    assert all(np.isfinite(o).all() for o in case.outputs)
    other = tuple(torch.randint_like(a, case.entry.vocab) if case.entry.vocab else 2 * torch.rand_like(a) - 1
                  for a in case.args)
    with torch.no_grad():
        moved = _flat(case.model(*other))
    for o, m in zip(case.outputs, moved):
        assert np.abs(o - m).max() > 1e-2 * np.abs(o).max()


def test_onnxruntime_matches_eager(case):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), case.args)})
    assert len(got) == len(case.outputs)
    for g, want in zip(got, case.outputs):
        np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def _budgets(graph: Graph) -> tuple[int, int]:
    """(M_R, activation bytes) under COSMA's int8 target."""
    target = TARGETS["cosma-int8"]
    problem = Problem(graph, target)
    m_r = max(problem.footprint(op) for op in graph.ops)
    acts = sum(target.size(t) for t in graph.tensors.values() if t.kind in ("activation", "output"))
    return m_r, acts


def test_frontends_agree(case):
    g_onnx = onnx_frontend.load_onnx(case.path, fuse=True)
    # decompose_attention: the ONNX file spells attention as Transpose, Mul, Mul, MatMul, Softmax, MatMul
    g_fx = fx_frontend.load_module(case.model, case.args, fuse=True, decompose_attention=True)
    assert len(g_onnx.inputs) == len(g_fx.inputs) == case.entry.num_inputs
    assert len(g_onnx.outputs) == len(g_fx.outputs) == len(case.outputs)
    (mr_onnx, acts_onnx), (mr_fx, acts_fx) = _budgets(g_onnx), _budgets(g_fx)
    assert mr_onnx == mr_fx, "M_R differs between the ONNX and fx routes"
    assert acts_onnx == acts_fx, f"activation bytes differ: {len(g_onnx.ops)} ONNX ops, {len(g_fx.ops)} fx ops"
