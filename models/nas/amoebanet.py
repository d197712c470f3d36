"""AmoebaNet-A mobile (Real et al., 2019, "Regularized Evolution for Image Classifier
Architecture Search"), N=4 F=50 at 224x224.

The cells are `amoeba_net_a` of tensorflow/tpu models/official/amoeba_net/model_specs.py, run
by the same slim cell as NASNet (`network_utils.BaseCell` is slim's `NasNetABaseCell` plus the
bottlenecked `1x7_7x1`). The network is tensorflow/tpu `model_builder._build_network_base`:
32-filter stem conv, two reduction stem cells, num_cells = 3N = 12 normal cells with a
reduction cell before the 2nd and 3rd stacks, no aux head. F=50 makes the second stem cell 25
wide; the factorized reduction feeding it gives the odd channel to its shifted path, as slim's
does (the tpu copy asserts even widths).

The paper reports 5.1M parameters for AmoebaNet-A (N=4, F=50); this build has 5,086,930
(-0.3%). AmoebaNet-A is used rather than AmoebaNet-D because only -A has a published mobile
configuration and count.
"""
from __future__ import annotations

from torch import nn

from planner.models import seeded
from planner.models.nas.nasnet import CellSpec, Network
from planner.models.nas.ops import calibrate_bn

AMOEBANET_A_NORMAL = CellSpec(
    ('avg_pool_3x3', 'max_pool_3x3', 'separable_3x3_2', 'none', 'none', 'avg_pool_3x3', 'separable_3x3_2',
     'separable_5x5_2', 'avg_pool_3x3', 'separable_3x3_2'),
    (0, 0, 1, 1, 0, 1, 0, 2, 5, 0),
    (1, 0, 1, 0, 0, 1, 0))
AMOEBANET_A_REDUCTION = CellSpec(
    ('separable_3x3_2', 'avg_pool_3x3', 'max_pool_3x3', 'separable_7x7_2', 'max_pool_3x3', 'max_pool_3x3',
     'separable_3x3_2', '1x7_7x1', 'avg_pool_3x3', 'separable_7x7_2'),
    (1, 0, 0, 2, 1, 0, 4, 0, 1, 0),
    (1, 1, 0, 0, 0, 0, 0))


@seeded
def amoebanet_a() -> nn.Module:
    return calibrate_bn(Network(AMOEBANET_A_NORMAL, AMOEBANET_A_REDUCTION, num_cells=12, filters=50))
