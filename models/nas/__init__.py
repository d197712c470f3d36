"""Irregular networks from neural architecture search, in plain torch from their published
genotypes, at their published ImageNet mobile settings: NASNet-A, AmoebaNet-A, PNASNet-5,
DARTS (V2) and RandWire-WS. Each module's docstring names its genotype source and compares
its parameter count with the published one; `params` below is the published figure.

NASNet-A, AmoebaNet-A and PNASNet-5 share one cell implementation (TF-slim's, in
`models.nas.nasnet`); drop-path and auxiliary heads are left out (inference graphs). Weights
are random from seed 0, and each builder sets the BatchNorm running statistics from one seeded
2x3x224x224 batch (`ops.calibrate_bn`) so that eval-mode activations stay near unit scale.
"""
from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from planner.models import ZooEntry


def _lazy(module: str, fn: str) -> Callable[[], nn.Module]:
    # the modules load on first build, so `import models` stays cheap
    def build() -> nn.Module:
        return getattr(importlib.import_module(f"planner.models.nas.{module}"), fn)()

    build.__qualname__ = build.__name__ = f"planner.models.nas.{module}.{fn}"
    return build


_IMAGE, _SMALL = (1, 3, 224, 224), (1, 3, 64, 64)
ENTRIES: list[ZooEntry] = [
    ZooEntry("nasnet_a_mobile", "nas", _lazy("nasnet", "nasnet_a_mobile"), _IMAGE, 5_289_978, _SMALL,
             "NASNet-A mobile 4 @ 1056 (Zoph et al. 2018); cells from TF-slim nasnet_utils.py; count = Keras "
             "NASNetMobile / Cadene nasnetamobile trainable params (paper: 5.3M); no aux head"),
    ZooEntry("amoebanet_a", "nas", _lazy("amoebanet", "amoebanet_a"), _IMAGE, 5_100_000, _SMALL,
             "AmoebaNet-A mobile N=4 F=50 (Real et al. 2019); cells amoeba_net_a from tensorflow/tpu "
             "amoeba_net/model_specs.py; paper: 5.1M; no aux head"),
    ZooEntry("pnasnet5", "nas", _lazy("pnasnet", "pnasnet5"), _IMAGE, 5_100_000, _SMALL,
             "PNASNet-5 mobile (Liu et al. 2018); cell and mobile config from TF-slim pnasnet.py; paper: 5.1M; "
             "no aux head"),
    ZooEntry("darts_v2", "nas", _lazy("darts", "darts_v2"), _IMAGE, 4_718_752, _SMALL,
             "DARTS_V2 genotype, ImageNet C=48, 14 cells (Liu et al. 2019); quark0/darts cnn/; count = the "
             "reference code's (paper: 4.7M); no aux head"),
    ZooEntry("randwire_ws", "nas", _lazy("randwire", "randwire_ws"), _IMAGE, 5_600_000, _SMALL,
             "RandWire-WS(4, 0.75) small regime C=78, N=32 (Xie et al. 2019); graphs from networkx "
             "connected_watts_strogatz_graph seeds 0, 1, 2; paper: 5.6M +- 0.1M"),
]
