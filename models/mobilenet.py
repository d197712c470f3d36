"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3-Large (Howard et al., 2019), layer for
layer as torchvision builds them, so module names and parameter counts match its state dicts.

MobileNetV2 at width 1.0 has 3,504,872 parameters; MobileNetV3-Large 5,483,032. The
segmentation zoo uses `mobilenet_v3_large(dilated=True)`, whose last three blocks trade their
stride for dilation 2 (output stride 16), as torchvision's LR-ASPP does. Weights follow
torchvision's initialisation, except MobileNetV2's convs (see there).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from planner.models import seeded


def make_divisible(v: float, divisor: int = 8) -> int:
    """Rounds `v` to the nearest multiple of `divisor`, never more than 10% below it."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v



def _init(model: nn.Module, conv_mode: str) -> None:
    """torchvision's MobileNet initialisation, with the conv fan mode chosen by the caller."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

class ConvBNAct(nn.Sequential):
    """conv -> norm -> activation with 'same' padding; torchvision's Conv2dNormActivation."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 dilation: int = 1, norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
                 activation_layer: Callable[..., nn.Module] | None = nn.ReLU):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation,
                                             groups=groups, bias=False), norm_layer(cout)]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


class SqueezeExcitation(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))); torchvision's ops.SqueezeExcitation."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidualV2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(cin, hidden, 1, activation_layer=nn.ReLU6))
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden, activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (channels), n (repeats), s (stride of the first repeat): the paper's Table 2
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        cin, last = 32, 1280
        features: list[nn.Module] = [ConvBNAct(3, cin, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(InvertedResidualV2(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNAct(cin, last, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        # torchvision uses fan_out; untrained, that shrinks activations ~10x per stage
        # (the logits end near 1e-9), so fan_in keeps them O(1) here
        _init(self, conv_mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class InvertedResidualV3(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, use_hs: bool, stride: int,
                 dilation: int, norm_layer: Callable[..., nn.Module]):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act = nn.Hardswish if use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvBNAct(cin, expanded, 1, norm_layer=norm_layer, activation_layer=act))
        layers.append(ConvBNAct(expanded, expanded, kernel, 1 if dilation > 1 else stride, groups=expanded,
                                dilation=dilation, norm_layer=norm_layer, activation_layer=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)))
        layers.append(ConvBNAct(expanded, cout, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cout
        self.is_strided = stride > 1  # torchvision's `_is_cn`: the block starts a new stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


class MobileNetV3(nn.Module):
    def __init__(self, dilated: bool = False, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        d = 2 if dilated else 1
        # input, kernel, expanded, output, SE, hard-swish, stride, dilation: the paper's Table 1
        setting = [(16, 3, 16, 16, False, False, 1, 1), (16, 3, 64, 24, False, False, 2, 1),
                   (24, 3, 72, 24, False, False, 1, 1), (24, 5, 72, 40, True, False, 2, 1),
                   (40, 5, 120, 40, True, False, 1, 1), (40, 5, 120, 40, True, False, 1, 1),
                   (40, 3, 240, 80, False, True, 2, 1), (80, 3, 200, 80, False, True, 1, 1),
                   (80, 3, 184, 80, False, True, 1, 1), (80, 3, 184, 80, False, True, 1, 1),
                   (80, 3, 480, 112, True, True, 1, 1), (112, 3, 672, 112, True, True, 1, 1),
                   (112, 5, 672, 160, True, True, 2, d), (160, 5, 960, 160, True, True, 1, d),
                   (160, 5, 960, 160, True, True, 1, d)]
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: list[nn.Module] = [ConvBNAct(3, 16, 3, 2, norm_layer=norm, activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(*row, norm_layer=norm) for row in setting]
        layers.append(ConvBNAct(160, 960, 1, norm_layer=norm, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(inplace=True),
                                        nn.Dropout(dropout, inplace=True), nn.Linear(1280, num_classes))
        _init(self, conv_mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@seeded
def mobilenet_v2() -> MobileNetV2:
    return MobileNetV2()


@seeded
def mobilenet_v3_large(dilated: bool = False) -> MobileNetV3:
    return MobileNetV3(dilated=dilated)
