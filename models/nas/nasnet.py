"""NASNet-A mobile (Zoph et al., 2018, "Learning Transferable Architectures for Scalable Image
Recognition"), 4 @ 1056 at 224x224, and the NASNet-search-space cell and ImageNet network
that AmoebaNet-A and PNASNet-5 reuse.

The cell is TF-slim's `NasNetABaseCell` (tensorflow/models research/slim/nets/nasnet/
nasnet_utils.py), the reference every published NASNet-space model was trained with. A cell
spec is the three lists slim uses:

    ops      10 op names, two per block: left, right
    inputs   10 hidden-state indices, one per op; 0 is the cell's 1x1-projected input x,
             1 the previous cell's output `prev` matched to x, 2.. the blocks' sums
    used     7 flags, one per hidden state; the states with flag 0 are concatenated

A block computes `op_left(h[inputs[2b]]) + op_right(h[inputs[2b+1]])`. In a strided cell only
ops reading h0 or h1 stride. A cell with no previous cell (the first stem cell) uses its raw
input as h1.

NASNet-A mobile (slim `mobile_imagenet_config`): 32-filter stem conv, 2 reduction stem cells,
12 normal cells in 3 stacks of 4 with a reduction cell before the 2nd and 3rd stacks, 44
filters (x 24 = 1056 penultimate), no aux head. Parameters: 5,289,978, equal to Keras
`NASNetMobile` trainable parameters and Cadene's `nasnetamobile`; the paper rounds to 5.3M.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from planner.models import seeded
from planner.models.nas.ops import FactorizedReduce, calibrate_bn, conv_bn, relu_conv_bn, sep_conv

BN_EPS = 1e-3  # TF-slim batch_norm epsilon


class CellSpec(NamedTuple):
    ops: tuple[str, ...]      # 10 op names: left, right of each of the 5 blocks
    inputs: tuple[int, ...]   # 10 hidden-state indices the ops read
    used: tuple[int, ...]     # 7 flags; states with 0 form the cell output


# slim nasnet_utils.NasNetANormalCell / NasNetAReductionCell
NASNET_A_NORMAL = CellSpec(
    ('separable_5x5_2', 'separable_3x3_2', 'separable_5x5_2', 'separable_3x3_2', 'avg_pool_3x3',
     'none', 'avg_pool_3x3', 'avg_pool_3x3', 'separable_3x3_2', 'none'),
    (0, 1, 1, 1, 0, 1, 1, 1, 0, 0),
    (1, 0, 0, 0, 0, 0, 0))
NASNET_A_REDUCTION = CellSpec(
    ('separable_5x5_2', 'separable_7x7_2', 'max_pool_3x3', 'separable_7x7_2', 'avg_pool_3x3',
     'separable_5x5_2', 'none', 'avg_pool_3x3', 'separable_3x3_2', 'max_pool_3x3'),
    (0, 1, 0, 1, 0, 1, 3, 2, 2, 0),
    (1, 1, 1, 0, 0, 0, 0))


def _make_op(name: str, cin: int, cout: int, stride: int) -> nn.Module:
    """One slim op (`NasNetABaseCell._apply_conv_operation`, plus the AmoebaNet-A `1x7_7x1`)."""
    if name.startswith('separable_'):            # separable_KxK_N
        _, kk, n = name.split('_')
        return sep_conv(cin, cout, int(kk.split('x')[0]), stride, int(n), BN_EPS)
    if name in ('avg_pool_3x3', 'max_pool_3x3'):  # pooling, projected to cout without a ReLU
        pool = (nn.AvgPool2d(3, stride, 1, count_include_pad=False) if name[0] == 'a'
                else nn.MaxPool2d(3, stride, 1))
        return pool if cin == cout else nn.Sequential(pool, *conv_bn(cin, cout, eps=BN_EPS))
    if name == 'none':                            # identity, or a strided 1x1 where shapes differ
        return nn.Identity() if stride == 1 and cin == cout else relu_conv_bn(cin, cout, 1, stride, eps=BN_EPS)
    if name == '1x7_7x1':                         # AmoebaNet: 1x1 to cout/4, 1x7, 7x1, 1x1 back
        mid = cout // 4
        return nn.Sequential(*relu_conv_bn(cin, mid, eps=BN_EPS),
                             *relu_conv_bn(mid, mid, (1, 7), (1, stride), (0, 3), BN_EPS),
                             *relu_conv_bn(mid, mid, (7, 1), (stride, 1), (3, 0), BN_EPS),
                             *relu_conv_bn(mid, cout, eps=BN_EPS))
    raise ValueError(f'unknown NASNet-space op {name!r}')


class Cell(nn.Module):
    """One slim cell. `x` and `prev` are (channels, reductions so far) of the two inputs;
    `prev=None` marks the first stem cell, whose raw input serves as h1."""

    def __init__(self, spec: CellSpec, x: tuple[int, int], prev: tuple[int, int] | None, filters: int, stride: int):
        super().__init__()
        self.inputs = spec.inputs
        self.base = relu_conv_bn(x[0], filters, eps=BN_EPS)
        # h1: prev matched to x, reduced if it is larger, projected if it is wider
        if prev is None:
            self.prev, h1 = nn.Identity(), x
        elif prev[1] != x[1]:
            self.prev, h1 = FactorizedReduce(prev[0], filters, True, True, BN_EPS), (filters, x[1])
        elif prev[0] != filters:
            self.prev, h1 = relu_conv_bn(prev[0], filters, eps=BN_EPS), (filters, x[1])
        else:
            self.prev, h1 = nn.Identity(), prev
        states = [(filters, x[1]), h1]
        self.ops = nn.ModuleList()
        for b in range(5):
            for i in spec.inputs[2 * b:2 * b + 2]:
                s = stride if i < 2 else 1
                self.ops.append(_make_op(spec.ops[len(self.ops)], states[i][0], filters, s))
            states.append((filters, states[0][1] + (stride > 1)))
        # unused states that differ from the last block's output are reduced to match it
        self.concat = [i for i, u in enumerate(spec.used) if not u]
        self.match = nn.ModuleList()
        for i in self.concat:
            c, lvl = states[i]
            if lvl != states[-1][1]:
                self.match.append(FactorizedReduce(c, filters, False, True, BN_EPS))
            elif c != filters:
                self.match.append(conv_bn(c, filters, eps=BN_EPS))
            else:
                self.match.append(nn.Identity())
        self.out_channels = filters * len(self.concat)

    def forward(self, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        h = [self.base(x), self.prev(prev)]
        for b in range(5):
            i, j = self.inputs[2 * b], self.inputs[2 * b + 1]
            h.append(self.ops[2 * b](h[i]) + self.ops[2 * b + 1](h[j]))
        return torch.cat([m(h[i]) for m, i in zip(self.match, self.concat)], dim=1)


def reduction_layers(num_cells: int, num_reduction_layers: int = 2) -> list[int]:
    """slim `calc_reduction_layers`: indices of the cells a reduction precedes (or replaces)."""
    return [int(p / (num_reduction_layers + 1) * num_cells) for p in range(1, num_reduction_layers + 1)]


class Network(nn.Module):
    """slim `_build_nasnet_base` / `_build_pnasnet_base` with the ImageNet stem: a 3x3 stride-2
    VALID conv, two stride-2 stem cells at 1/4 and 1/2 of `filters`, then `num_cells` cells.

    With a `reduction` spec (NASNet, AmoebaNet) a reduction cell is inserted before each cell in
    `reduction_layers`; without one (PNASNet) those cells are the normal cell with stride 2.
    Each cell reads the previous cell's output as x and the one before as prev (the mobile
    configs: NASNet and AmoebaNet insert reductions with skip_reduction_layer_input=0, PNASNet
    strides with skip_reduction_layer_input=1; both mean exactly that).
    """

    def __init__(self, normal: CellSpec, reduction: CellSpec | None, num_cells: int, filters: int,
                 stem_filters: int = 32, num_classes: int = 1000):
        super().__init__()
        self.stem = conv_bn(3, stem_filters, 3, 2, 0, BN_EPS)
        stem_cell = reduction or normal
        plan = [(stem_cell, 2, int(filters * 0.25)), (stem_cell, 2, int(filters * 0.5))]
        scaling, reductions = 1, reduction_layers(num_cells)
        for n in range(num_cells):
            if n in reductions:
                scaling *= 2
                if reduction is not None:
                    plan.append((reduction, 2, filters * scaling))
            plan.append((normal, 2 if n in reductions and reduction is None else 1, filters * scaling))
        prev, x = None, (stem_filters, 1)
        self.cells = nn.ModuleList()
        for spec, stride, f in plan:
            cell = Cell(spec, x, prev, f, stride)
            self.cells.append(cell)
            prev, x = x, (cell.out_channels, x[1] + (stride > 1))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(x[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s1, s0)
        return self.fc(self.relu(s1).mean((2, 3)))


@seeded
def nasnet_a_mobile() -> nn.Module:
    return calibrate_bn(Network(NASNET_A_NORMAL, NASNET_A_REDUCTION, num_cells=12, filters=44))
