"""Building blocks shared by the NAS zoo: separable convs, factorized reduction, conv-BN
stacks.

Convolutions carry no bias (every conv is followed by a BatchNorm), as in every reference
implementation. Drop-path and auxiliary heads are left out: the zoo is for inference graphs,
and neither exists in an eval-mode forward.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def conv_bn(cin: int, cout: int, k: int | tuple[int, int] = 1, stride: int | tuple[int, int] = 1,
            padding: int | tuple[int, int] = 0, eps: float = 1e-5) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, bias=False), nn.BatchNorm2d(cout, eps=eps))


def relu_conv_bn(cin: int, cout: int, k: int | tuple[int, int] = 1, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, eps: float = 1e-5) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), *conv_bn(cin, cout, k, stride, padding, eps))


def relu_sep_bn(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, eps: float = 1e-5) -> nn.Sequential:
    """ReLU, depthwise k x k (multiplier 1), pointwise 1x1 to `cout`, BN: one slim `separable_conv2d`
    layer, a DARTS `DilConv`, or a RandWire node's transformation."""
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(cin, cin, k, stride, dilation * (k - 1) // 2, dilation, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout, eps=eps))


def sep_conv(cin: int, cout: int, k: int, stride: int = 1, layers: int = 2, eps: float = 1e-5) -> nn.Sequential:
    """`layers` stacked ReLU-SepConv-BN; only the first strides and changes the width (slim
    `_stacked_separable_conv`; DARTS `SepConv` is the 2-layer case with cin == cout)."""
    return nn.Sequential(*[relu_sep_bn(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, eps=eps)
                           for i in range(layers)])


class FactorizedReduce(nn.Module):
    """Halves H and W without dropping pixels: two strided 1x1 convs, one on the grid shifted by
    one pixel, concatenated and batch-normed. An odd `cout` gives the extra channel to the shifted
    path (slim). `same_pad` zero-pads the shifted grid on the right and bottom, as slim does, so
    odd sizes halve to ceil(H/2) on both paths; DARTS slices without padding."""

    def __init__(self, cin: int, cout: int, relu: bool = True, same_pad: bool = False, eps: float = 1e-5):
        super().__init__()
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.same_pad = same_pad
        self.conv_1 = nn.Conv2d(cin, cout // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(cin, cout - cout // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:] if self.same_pad else x[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def calibrate_bn(model: nn.Module, shape: tuple[int, ...] = (2, 3, 224, 224)) -> nn.Module:
    """Sets every BatchNorm's running statistics to those of one standard-normal batch (drawn
    from the caller's RNG) and returns the model in eval mode.

    With random weights and the default running statistics (mean 0, variance 1) eval-mode BN
    is the identity, and activations shrink about 3x per conv: after the ~100 convs on these
    networks' longest paths they are denormal, CPU inference slows down 10-30x and the logits
    are the fc bias whatever the input. Calibrated, activations stay near unit scale."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(shape))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.eval()
