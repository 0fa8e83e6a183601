"""Fusion of per-modality embeddings into one representation."""

from __future__ import annotations

import torch
from torch import nn


class ConcatFusion(nn.Module):
    def __init__(self, num_modalities: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_modalities * dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, M, D) -> (B, D)
        return self.net(tokens.flatten(1))


class AttentionFusion(nn.Module):
    """One self-attention layer over modality tokens (with learned type embeddings), mean-pooled.

    Written with plain matmuls so that it runs under ``torch.func.vmap``.
    """

    def __init__(self, num_modalities: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.type_embed = nn.Parameter(torch.zeros(num_modalities, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens + self.type_embed
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(attn @ v)
        x = x + self.ff(self.norm2(x))
        return x.mean(dim=1)


def build_fusion(kind: str, num_modalities: int, dim: int, hidden: int, dropout: float = 0.0) -> nn.Module:
    if kind == "attention":
        return AttentionFusion(num_modalities, dim, hidden, dropout)
    return ConcatFusion(num_modalities, dim, hidden, dropout)
