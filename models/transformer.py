"""The Transformer base model (Vaswani et al., 2017) as torch's nn.Transformer: d_model 512,
8 heads, 6 encoder and 6 decoder layers, FFN 2048, post-norm, a final LayerNorm on each stack;
44,140,544 parameters.

Only the body is modelled: the inputs are the already-embedded source and target sequences,
src and tgt of shape (N, S, 512) (batch first), and the output is the decoder's (N, S, 512)
hidden state. Token embeddings, positional encodings and the output projection are left out
(with the paper's shared 37k-token vocabulary they add 18.9M parameters and one gather and one
matmul, which are not where the activation memory is). No attention mask is applied: a causal
mask on the decoder's self-attention changes no tensor's size.
"""
from __future__ import annotations

import torch
from torch import nn

from planner.models import seeded


class TransformerBase(nn.Module):
    def __init__(self, d_model: int = 512, heads: int = 8, layers: int = 6, ffn: int = 2048):
        super().__init__()
        self.transformer = nn.Transformer(d_model, heads, layers, layers, ffn, batch_first=True)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.transformer(src, tgt)


@seeded
def transformer() -> TransformerBase:
    return TransformerBase()
