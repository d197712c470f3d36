"""Video classifiers as torchvision builds them, for Kinetics-400 (400 classes), input
N x 3 x T x H x W:

- R(2+1)D-18 (Tran et al., 2018): a ResNet-18 whose 3x3x3 convs are factored into a 1x3x3
  spatial conv to `midplanes` channels, then a 3x1x1 temporal conv, with `midplanes` chosen so
  the factored pair has the parameters of the full 3D conv; 31,505,325 parameters.
- S3D (Xie et al., 2018): Inception-v1 with every 3x3 conv separated into 1x3x3 then 3x1x1;
  8,320,048 parameters. Its final AvgPool3d((2, 7, 7)) needs T >= 14 and H, W >= 209
  (torchvision: min size 224, min temporal size 14).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from planner.models import seeded


class Conv2Plus1D(nn.Sequential):
    def __init__(self, cin: int, cout: int, midplanes: int, stride: int = 1):
        super().__init__(nn.Conv3d(cin, midplanes, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
                         nn.BatchNorm3d(midplanes), nn.ReLU(inplace=True),
                         nn.Conv3d(midplanes, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        midplanes = (cin * planes * 3 * 3 * 3) // (cin * 3 * 3 + 3 * planes)
        self.conv1 = nn.Sequential(Conv2Plus1D(cin, planes, midplanes, stride), nn.BatchNorm3d(planes),
                                   nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(Conv2Plus1D(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class R2Plus1D(nn.Module):
    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 400):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(45),
                                  nn.ReLU(inplace=True), nn.Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), bias=False),
                                  nn.BatchNorm3d(64), nn.ReLU(inplace=True))
        self.inplanes = 64
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv3d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm3d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.avgpool(x).flatten(1))


class Conv3dBNAct(nn.Sequential):
    """torchvision's Conv3dNormActivation with an explicit padding."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm3d):
        super().__init__(nn.Conv3d(cin, cout, kernel_size, stride, padding, bias=False), norm_layer(cout),
                         nn.ReLU(inplace=True))


class TemporalSeparableConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int, norm_layer: Callable[..., nn.Module]):
        super().__init__(Conv3dBNAct(cin, cout, (1, k, k), (1, stride, stride), (0, padding, padding), norm_layer),
                         Conv3dBNAct(cout, cout, (k, 1, 1), (stride, 1, 1), (padding, 0, 0), norm_layer))


class SepInceptionBlock3D(nn.Module):
    def __init__(self, cin: int, b0: int, b1_mid: int, b1: int, b2_mid: int, b2: int, b3: int,
                 norm_layer: Callable[..., nn.Module]):
        super().__init__()
        self.branch0 = Conv3dBNAct(cin, b0, 1, norm_layer=norm_layer)
        self.branch1 = nn.Sequential(Conv3dBNAct(cin, b1_mid, 1, norm_layer=norm_layer),
                                     TemporalSeparableConv(b1_mid, b1, 3, 1, 1, norm_layer))
        self.branch2 = nn.Sequential(Conv3dBNAct(cin, b2_mid, 1, norm_layer=norm_layer),
                                     TemporalSeparableConv(b2_mid, b2, 3, 1, 1, norm_layer))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), Conv3dBNAct(cin, b3, 1, norm_layer=norm_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class S3D(nn.Module):
    def __init__(self, num_classes: int = 400, dropout: float = 0.2):
        super().__init__()
        norm = partial(nn.BatchNorm3d, eps=0.001, momentum=0.001)
        pool = partial(nn.MaxPool3d, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.features = nn.Sequential(
            TemporalSeparableConv(3, 64, 7, 2, 3, norm), pool(), Conv3dBNAct(64, 64, 1, norm_layer=norm),
            TemporalSeparableConv(64, 192, 3, 1, 1, norm), pool(),
            SepInceptionBlock3D(192, 64, 96, 128, 16, 32, 32, norm),
            SepInceptionBlock3D(256, 128, 128, 192, 32, 96, 64, norm),
            nn.MaxPool3d(3, 2, 1),
            SepInceptionBlock3D(480, 192, 96, 208, 16, 48, 64, norm),
            SepInceptionBlock3D(512, 160, 112, 224, 24, 64, 64, norm),
            SepInceptionBlock3D(512, 128, 128, 256, 24, 64, 64, norm),
            SepInceptionBlock3D(512, 112, 144, 288, 32, 64, 64, norm),
            SepInceptionBlock3D(528, 256, 160, 320, 32, 128, 128, norm),
            nn.MaxPool3d(2, 2, 0),
            SepInceptionBlock3D(832, 256, 160, 320, 32, 128, 128, norm),
            SepInceptionBlock3D(832, 384, 192, 384, 48, 128, 128, norm),
        )
        self.avgpool = nn.AvgPool3d((2, 7, 7), 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv3d(1024, num_classes, 1))
        # torchvision keeps torch's default init, under which untrained activations vanish and
        # the logits are just the classifier's bias; He init keeps them O(1)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean(self.classifier(self.avgpool(self.features(x))), dim=(2, 3, 4))


@seeded
def r2plus1d_18() -> R2Plus1D:
    return R2Plus1D()


@seeded
def s3d() -> S3D:
    return S3D()
