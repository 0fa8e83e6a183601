"""The multimodal classifier used by the baselines and the prototype methods."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from mmfl.config import ModelConfig
from mmfl.data.dataset import DataSpec
from mmfl.models.encoders import build_encoder
from mmfl.models.fusion import build_fusion

MissingStrategy = Literal["mask", "zero"]


class MultimodalNet(nn.Module):
    """Encoders per modality -> (substitution of missing embeddings) -> fusion -> linear head.

    ``missing="mask"``: a missing modality takes an explicit path: its embedding is replaced by a
    substitute, by default a learned placeholder vector per modality; methods may pass their own
    substitutes (PmcmFL passes class prototypes). ``missing="zero"`` is the zero-fill baseline:
    absent inputs are zeros and the model is not told which ones are absent.
    """

    def __init__(self, spec: DataSpec, cfg: ModelConfig, missing: MissingStrategy = "mask"):
        super().__init__()
        self.names = spec.names
        self.missing = missing
        self.encoders = nn.ModuleDict(
            {m.name: build_encoder(m, cfg.hidden, cfg.embed_dim, cfg.dropout) for m in spec.modalities}
        )
        self.placeholders = nn.Parameter(torch.zeros(len(self.names), cfg.embed_dim))
        self.fusion = build_fusion(cfg.fusion, len(self.names), cfg.embed_dim, cfg.hidden, cfg.dropout)
        self.head = nn.Linear(cfg.embed_dim, spec.num_classes)

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw per-modality embeddings, stacked as (B, M, D)."""
        return torch.stack([self.encoders[n](inputs[n]) for n in self.names], dim=1)

    def substitute(
        self, emb: torch.Tensor, present: torch.Tensor, substitutes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Replace embeddings of absent modalities; ``substitutes`` is (B, M, D) or None (placeholders)."""
        if self.missing == "zero":
            return emb
        fill = self.placeholders.unsqueeze(0).expand_as(emb) if substitutes is None else substitutes
        return torch.where(present.unsqueeze(-1), emb, fill)

    def fuse(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fusion(tokens)

    def features(
        self, inputs: dict[str, torch.Tensor], present: torch.Tensor, substitutes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-modality embeddings after substitution (B, M, D), fused representation (B, D))."""
        if self.missing == "zero":
            inputs = {
                n: inputs[n] * present[:, j].reshape(-1, *([1] * (inputs[n].dim() - 1))).to(inputs[n].dtype)
                for j, n in enumerate(self.names)
            }
        tokens = self.substitute(self.encode(inputs), present, substitutes)
        return tokens, self.fuse(tokens)

    def forward(
        self, inputs: dict[str, torch.Tensor], present: torch.Tensor, substitutes: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(self.features(inputs, present, substitutes)[1])
