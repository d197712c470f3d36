"""DARTS (Liu et al., 2019, "DARTS: Differentiable Architecture Search"), genotype DARTS_V2
(second-order search), in the paper's ImageNet mobile setting: C=48, 14 cells, no aux head.

Genotype, ops and network are quark0/darts cnn/genotypes.py, cnn/operations.py and
cnn/model.py `NetworkImageNet`. A cell has 4 nodes; node k sums two ops applied to earlier
states (0 and 1 are the two preprocessed cell inputs), and the cell outputs the concatenation
of nodes 2..5. Cells 14//3 and 2*14//3 are reduction cells (ops on the inputs stride 2).
The final `AvgPool2d(7)` is a global mean here, the same at 224x224 and able to run smaller.

The paper reports 4.7M parameters; this build has 4,718,752 (+0.4%), the count the reference
code prints for `NetworkImageNet(48, 1000, 14, False, DARTS_V2)`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from planner.models import seeded
from planner.models.nas.ops import FactorizedReduce, calibrate_bn, conv_bn, relu_conv_bn, relu_sep_bn, sep_conv


class Genotype(NamedTuple):
    normal: tuple[tuple[str, int], ...]   # (op, input state) pairs, two per node
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]


DARTS_V2 = Genotype(
    normal=(('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)),
    reduce_concat=(2, 3, 4, 5))


def _make_op(name: str, c: int, stride: int) -> nn.Module:
    """The DARTS operations the published genotypes use (operations.py `OPS`)."""
    if name == 'skip_connect':
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name == 'max_pool_3x3':
        return nn.MaxPool2d(3, stride, 1)
    if name == 'avg_pool_3x3':
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name.startswith('sep_conv_'):
        return sep_conv(c, c, int(name[-1]), stride)
    if name.startswith('dil_conv_'):
        return relu_sep_bn(c, c, int(name[-1]), stride, dilation=2)
    raise ValueError(f'unknown DARTS op {name!r}')


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        self.preprocess0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else relu_conv_bn(c_prev_prev, c)
        self.preprocess1 = relu_conv_bn(c_prev, c)
        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.inputs = [i for _, i in pairs]
        self.ops = nn.ModuleList(_make_op(name, c, 2 if reduction and i < 2 else 1) for name, i in pairs)
        self.out_channels = c * len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for k in range(len(self.ops) // 2):
            a, b = self.inputs[2 * k], self.inputs[2 * k + 1]
            states.append(self.ops[2 * k](states[a]) + self.ops[2 * k + 1](states[b]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class NetworkImageNet(nn.Module):
    def __init__(self, c: int, num_classes: int, layers: int, genotype: Genotype):
        super().__init__()
        self.stem0 = nn.Sequential(*conv_bn(3, c // 2, 3, 2, 1), nn.ReLU(), *conv_bn(c // 2, c, 3, 2, 1))
        self.stem1 = relu_conv_bn(c, c, 3, 2, 1)
        c_prev_prev, c_prev, c_curr = c, c, c
        self.cells = nn.ModuleList()
        reduction_prev = True
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            c_curr *= 2 if reduction else 1
            cell = Cell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            c_prev_prev, c_prev = c_prev, cell.out_channels
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(s1.mean((2, 3)))


@seeded
def darts_v2() -> nn.Module:
    return calibrate_bn(NetworkImageNet(48, 1000, 14, DARTS_V2))
