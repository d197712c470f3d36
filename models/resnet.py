"""ResNet-50 (He et al., 2016) and ResNeXt-50 32x4d (Xie et al., 2017), layer for layer as
torchvision builds them: v1.5 (the stride sits on the 3x3 conv of a bottleneck), module names
and parameter counts equal to torchvision's (25,557,032 and 25,028,904).

`replace_stride_with_dilation` gives the dilated backbones of the segmentation zoo: a stage
whose flag is set keeps its input resolution and multiplies its dilation by 2 instead.
"""
from __future__ import annotations

import torch
from torch import nn

from planner.models import seeded


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, groups: int = 1,
                 base_width: int = 64, dilation: int = 1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """With `num_classes=None` there is no pooling or fc, and forward returns the output of
    layer4 (the segmentation backbones; `layer3` is reachable through `forward_features`)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False),
                 num_classes: int | None = 1000):
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(512, layers[3], 2, replace_stride_with_dilation[2])
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                             previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                              dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs of layer3 and layer4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, self.layer4(c3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)[1]
        if not hasattr(self, "fc"):
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


@seeded
def resnet50() -> ResNet:
    return ResNet()


@seeded
def resnext50_32x4d() -> ResNet:
    return ResNet(groups=32, width_per_group=4)


def resnet50_backbone() -> ResNet:
    """The dilated, headless ResNet-50 under FCN and DeepLabV3 (output stride 8)."""
    return ResNet(replace_stride_with_dilation=(False, True, True), num_classes=None)
