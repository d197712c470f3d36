"""Three networks the inference benchmark needs that the zoo (`planner.models`) lacks, in
plain torch with seeded random weights and their published layer configurations:
ConvNeXt-T (Liu et al. 2022), EfficientNet-B0 (Tan & Le 2019) and BERT-base (Devlin et
al. 2019, encoder only). They live here, not in the zoo, because the zoo's tests export
every member to ONNX; `benchmarks/gpu_inference.py` only runs them through torch.compile.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["convnext_t", "efficientnet_b0", "bert_base", "BUILDERS"]


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (ConvNeXt's downsampling norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(nn.functional.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


def convnext_t(num_classes: int = 1000) -> nn.Module:
    """ConvNeXt-T: depths (3, 3, 9, 3), widths (96, 192, 384, 768); input 3x224x224."""
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, stride=4), _LayerNorm2d(dims[0], eps=1e-6)]
    for k, (dim, depth) in enumerate(zip(dims, depths)):
        if k:
            layers += [_LayerNorm2d(dims[k - 1], eps=1e-6), nn.Conv2d(dims[k - 1], dim, 2, stride=2)]
        layers += [_ConvNeXtBlock(dim) for _ in range(depth)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], num_classes)]
    return nn.Sequential(*layers)


class _MBConv(nn.Module):
    """Inverted residual with squeeze-and-excitation and SiLU (EfficientNet's block)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid, squeeze = cin * expand, max(1, cin // 4)
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU()) \
            if expand != 1 else nn.Identity()
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                                nn.BatchNorm2d(mid), nn.SiLU())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, squeeze, 1), nn.SiLU(),
                                nn.Conv2d(squeeze, mid, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.expand(x))
        y = self.project(y * self.se(y))
        return x + y if self.residual else y


def efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    """EfficientNet-B0: the seven MBConv stages of the paper's Table 1; input 3x224x224."""
    stages = [(1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2), (6, 112, 3, 5, 1),
              (6, 192, 4, 5, 2), (6, 320, 1, 3, 1)]  # expand, channels, repeats, kernel, first stride
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU()]
    cin = 32
    for expand, cout, repeats, kernel, stride in stages:
        for r in range(repeats):
            layers.append(_MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
            cin = cout
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, num_classes)]
    return nn.Sequential(*layers)


class _BertLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-12), nn.LayerNorm(d, eps=1e-12)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.out(y))
        return self.norm2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class BertBase(nn.Module):
    """BERT-base encoder: 12 layers, width 768, 12 heads, feed-forward 3072, post-norm;
    token ids in, the last hidden states and the pooled first token out."""

    def __init__(self, vocab: int = 30522, d: int = 768, layers: int = 12, heads: int = 12, ff: int = 3072,
                 positions: int = 512):
        super().__init__()
        self.tokens, self.positions, self.types = nn.Embedding(vocab, d), nn.Embedding(positions, d), nn.Embedding(2, d)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(_BertLayer(d, heads, ff) for _ in range(layers))
        self.pool = nn.Linear(d, d)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.tokens(ids) + self.positions(pos) + self.types(torch.zeros_like(ids)))
        for layer in self.layers:
            x = layer(x)
        return x, torch.tanh(self.pool(x[:, 0]))


def bert_base() -> nn.Module:
    return BertBase()


BUILDERS = {"convnext_t": convnext_t, "efficientnet_b0": efficientnet_b0, "bert_base": bert_base}
