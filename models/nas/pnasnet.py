"""PNASNet-5 mobile (Liu et al., 2018, "Progressive Neural Architecture Search") at 224x224.

The cell is `PNasNetNormalCell` of TF-slim research/slim/nets/nasnet/pnasnet.py, run by the
slim cell of `models.nas.nasnet`. PNASNet has no separate reduction cell: the network
(`_build_pnasnet_base`, `mobile_imagenet_config`: 9 cells, 54 filters, stem multiplier 1,
skip_reduction_layer_input=1, no aux head) uses the same cell with stride 2 for the two stem
cells and for cells 3 and 6.

The paper reports 5.1M parameters for PNASNet-5 mobile; this build has 5,064,487 (-0.7%).
The same code at the large config (12 cells, 216 filters, stem multiplier 3) gives 86,057,668,
the count of timm's and Cadene's `pnasnet5large` ported from the slim checkpoint.
"""
from __future__ import annotations

from torch import nn

from planner.models import seeded
from planner.models.nas.nasnet import CellSpec, Network
from planner.models.nas.ops import calibrate_bn

PNASNET_5 = CellSpec(
    ('separable_5x5_2', 'max_pool_3x3', 'separable_7x7_2', 'max_pool_3x3', 'separable_5x5_2', 'separable_3x3_2',
     'separable_3x3_2', 'max_pool_3x3', 'separable_3x3_2', 'none'),
    (1, 1, 0, 0, 0, 0, 4, 0, 1, 0),
    (1, 1, 0, 0, 0, 0, 0))


@seeded
def pnasnet5() -> nn.Module:
    return calibrate_bn(Network(PNASNET_5, None, num_cells=9, filters=54))
