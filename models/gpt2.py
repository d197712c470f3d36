"""GPT-2 (Radford et al., 2019) as a decoder-only transformer in plain torch, laid out like
the released checkpoints: token and position embeddings, pre-norm blocks (ln_1, causal
self-attention through one fused c_attn projection, ln_2, GELU MLP of 4x width), a final
LayerNorm and a language-model head tied to the token embedding. GPT-2 small (12 layers,
12 heads, width 768, 1024 positions, 50,257 tokens) has 124,439,808 parameters.

The input is a (batch, sequence) tensor of token ids; the output is the logits
(batch, sequence, vocabulary). Attention is `scaled_dot_product_attention(is_causal=True)`,
one fused kernel on a GPU, which the accelerator frontends decompose into the ops the ONNX
exporter writes. `dropout` (0 by default, 0.1 in the paper) applies after the embeddings,
to the attention probabilities, and after each residual branch, so a training graph has
random ops.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from planner.models import seeded


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, layers: int = 12, heads: int = 12, width: int = 768, positions: int = 1024,
                 vocab: int = 50257, dropout: float = 0.0):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(positions, width)
        self.drop = nn.Dropout(dropout)
        self.h = nn.Sequential(*(Block(width, heads, dropout) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in the released checkpoints
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / (2 * layers) ** 0.5)  # GPT-2's scaled residual init
            elif p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        return self.lm_head(self.ln_f(self.h(x)))


@seeded
def gpt2(layers: int = 12, heads: int = 12, width: int = 768, positions: int = 1024, vocab: int = 50257,
         dropout: float = 0.0) -> GPT2:
    """GPT-2 small by default; smaller configurations for tests (e.g. gpt2(2, 2, 64, 64, 512))."""
    return GPT2(layers, heads, width, positions, vocab, dropout)
