"""The NAS zoo (models.nas): parameter counts against the published ones, seeded eval forward,
dynamo ONNX export checked by onnxruntime, and lowering through the ONNX frontend.

Each model is exported once per session at its small shape (tests/conftest.py).
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from planner import models
from planner.frontends.onnx import load_onnx
from planner.models.nas import ENTRIES
from planner.models.nas.nasnet import Network
from planner.models.nas.pnasnet import PNASNET_5
from planner.models.nas.randwire import ws_dag

# name -> (our parameter count, the published one, its source)
COUNTS = {
    "nasnet_a_mobile": (5_289_978, 5_289_978, "Keras NASNetMobile trainable params = Cadene nasnetamobile; "
                                              "Zoph et al. 2018, ImageNet mobile: 5.3M"),
    "amoebanet_a": (5_086_930, 5_100_000, "Real et al. 2019, ImageNet mobile, AmoebaNet-A (N=4, F=50): 5.1M"),
    "pnasnet5": (5_064_487, 5_100_000, "Liu et al. 2018 (PNAS), ImageNet mobile, PNASNet-5: 5.1M"),
    "darts_v2": (4_718_752, 4_718_752, "quark0/darts train_imagenet.py log 'param size = 4.718752MB'; "
                                       "Liu et al. 2019, ImageNet mobile: 4.7M"),
    "randwire_ws": (5_651_922, 5_600_000, "Xie et al. 2019, small regime WS(4, 0.75) C=78: 5.6M +- 0.1M"),
}
# name -> ops after load_onnx (fuse=True) of the torch 2.13 dynamo export at the small shape; the
# exporter's optimizer folds BN into convs and merges identical parameter-free ops (DARTS' twin pools)
LOWERED_OPS = {"nasnet_a_mobile": 559, "amoebanet_a": 560, "pnasnet5": 449, "darts_v2": 421, "randwire_ws": 549}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # speed only: these are hundreds of small ops, and two intra-op threads on a busy 2-core
    # machine spend more time in barriers than in convs
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=[e.name for e in ENTRIES])
def built(request):
    entry = models.get(request.param)
    x = models.example_inputs(entry, shape=entry.small_shape)[0]
    return entry, entry.build(), x


@pytest.fixture(scope="module")
def exported(built, zoo_case):
    entry, model, x = built
    c = zoo_case(entry.name)  # the same seeded model, built and exported once per session
    return entry, c.model, c.args[0], c.path


def test_entries_registered():
    assert [e.name for e in ENTRIES] == list(COUNTS)
    for e in ENTRIES:
        assert models.get(e.name) is e and e.task == "nas" and e.input_shape == (1, 3, 224, 224)


def test_params_match_published(built):
    entry, model, _ = built
    ours, published, source = COUNTS[entry.name]
    n = sum(p.numel() for p in model.parameters())
    assert n == ours
    assert entry.params == published
    assert abs(n - published) <= 0.02 * published, source


def test_forward_seeded_and_deterministic(built):
    entry, model, x = built
    assert not model.training
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 1000) and torch.isfinite(y).all()
        assert 0.1 < y.std() < 10  # BN calibrated: the logits depend on the input, not just the fc bias
        assert not torch.allclose(model(torch.zeros_like(x)), y, atol=0.1)
        assert torch.equal(model(x), y)
        assert torch.equal(entry.build()(x), y)  # same seed, same weights


def test_onnx_matches_eager(exported):
    _, model, x, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3)


def test_lowers_through_onnx_frontend(exported):
    entry, model, _, path = exported
    g = load_onnx(path)
    kinds = collections.Counter(op.type.split("+")[0] for op in g.ops)
    # every conv survives lowering (fused epilogues keep their Conv), and the head is one Gemm
    assert kinds["Conv"] == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert kinds["Gemm"] == 1
    assert len(g.ops) == LOWERED_OPS[entry.name]


def test_pnasnet_large_count():
    # the same cell and network at slim's large config: timm / Cadene pnasnet5large, 86,057,668
    with torch.device("meta"):
        m = Network(PNASNET_5, None, num_cells=12, filters=216, stem_filters=96)
    assert sum(p.numel() for p in m.parameters()) == 86_057_668


def test_randwire_graphs():
    # WS keeps N*K/2 edges; pinned edge lists catch a networkx change to the generator
    digests = []
    for seed in range(3):
        preds = ws_dag(32, 4, 0.75, seed)
        assert sum(map(len, preds)) == 64
        assert all(u < v for v, ps in enumerate(preds) for u in ps)
        digests.append(hashlib.sha256(repr(preds).encode()).hexdigest()[:12])
    assert digests == ["e9492ab4f08b", "7a6a476b1688", "e6b272c46ce9"]
