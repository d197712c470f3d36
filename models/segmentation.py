"""Semantic segmentation as torchvision builds it, 21 classes (Pascal VOC labels):

- FCN-ResNet50 (Long et al., 2015) and DeepLabV3-ResNet50 (Chen et al., 2017): a ResNet-50
  with replace_stride_with_dilation=(False, True, True) (output stride 8), an FCN or ASPP head
  on layer4, and by default the auxiliary FCN head on layer3 that torchvision's published
  weights carry (and run in eval mode too). Parameters with the aux head: 35,322,218 and
  42,004,074 (torchvision's figures); without it 32,957,013 and 39,638,869.
- LR-ASPP-MobileNetV3-Large (Howard et al., 2019): the dilated MobileNetV3-Large features,
  'low' taken after the stride-8 stage (block 6, 40 channels) and 'high' after the last conv
  (960 channels, stride 16); 3,221,538 parameters.

Each head's logits are upsampled bilinearly to the input size. A model with the aux head
returns the tuple (out, aux); otherwise the tensor out (torchvision returns a dict).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from planner.models import seeded
from planner.models.mobilenet import MobileNetV3
from planner.models.resnet import resnet50_backbone


class FCNHead(nn.Sequential):
    def __init__(self, cin: int, channels: int):
        inter = cin // 4
        super().__init__(nn.Conv2d(cin, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(),
                         nn.Dropout(0.1), nn.Conv2d(inter, channels, 1))


class ASPPConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ASPPPooling(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin: int, rates: tuple[int, ...] = (12, 24, 36), cout: int = 256):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
                                   + [ASPPConv(cin, cout, r) for r in rates] + [ASPPPooling(cin, cout)])
        self.project = nn.Sequential(nn.Conv2d(len(self.convs) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], 1))


class DeepLabHead(nn.Sequential):
    def __init__(self, cin: int, num_classes: int):
        super().__init__(ASPP(cin), nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
                         nn.Conv2d(256, num_classes, 1))


class SimpleSegmentation(nn.Module):
    """Backbone, head on layer4, optional aux head on layer3; torchvision's FCN / DeepLabV3."""

    def __init__(self, classifier: nn.Module, aux_classifier: nn.Module | None):
        super().__init__()
        self.backbone = resnet50_backbone()
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        c3, c4 = self.backbone.forward_features(x)
        out = F.interpolate(self.classifier(c4), size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is None:
            return out
        return out, F.interpolate(self.aux_classifier(c3), size=size, mode="bilinear", align_corners=False)


class LRASPPHead(nn.Module):
    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128):
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                 nn.BatchNorm2d(inter_channels), nn.ReLU(inplace=True))
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    def __init__(self, num_classes: int = 21):
        super().__init__()
        features = MobileNetV3(dilated=True).features
        # stages start at the strided blocks; 'low' ends the stride-8 stage, 'high' is the last layer
        starts = [0] + [i for i, b in enumerate(features) if getattr(b, "is_strided", False)] + [len(features) - 1]
        self.low_pos, high_pos = starts[-4], starts[-1]
        self.backbone = features[:high_pos + 1]
        self.classifier = LRASPPHead(features[self.low_pos].out_channels, features[high_pos].out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = self.backbone[:self.low_pos + 1](x)
        high = self.backbone[self.low_pos + 1:](low)
        return F.interpolate(self.classifier(low, high), size=size, mode="bilinear", align_corners=False)


@seeded
def fcn_resnet50(aux: bool = True, num_classes: int = 21) -> SimpleSegmentation:
    return SimpleSegmentation(FCNHead(2048, num_classes), FCNHead(1024, num_classes) if aux else None)


@seeded
def deeplabv3_resnet50(aux: bool = True, num_classes: int = 21) -> SimpleSegmentation:
    return SimpleSegmentation(DeepLabHead(2048, num_classes), FCNHead(1024, num_classes) if aux else None)


@seeded
def lraspp_mobilenet_v3_large(num_classes: int = 21) -> LRASPP:
    return LRASPP(num_classes)
