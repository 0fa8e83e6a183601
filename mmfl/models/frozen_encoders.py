"""Frozen per-modality feature extractors for FedMVP-style methods (CLIP towers or identity).

- ``image`` modalities go through the CLIP vision tower and its projection;
- ``tokens`` modalities (int64 token ids) go through the CLIP text tower and its projection;
- other (float vector/series) modalities are taken as features already produced by a frozen
  encoder (e.g. MiniLM sentence embeddings), flattened.

Everything here is frozen and deterministic, so its output is cached once per sample.
"""

from __future__ import annotations

import math

import torch

from mmfl.data.dataset import DataSpec
from mmfl.models.backbones import BackboneConfig, load_clip, prepare_images, text_attention


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class FrozenEncoders:
    def __init__(self, spec: DataSpec, backbone: BackboneConfig, store=None):
        self.spec = spec
        self.cfg = backbone
        self._store = store
        self._clip = None

    @property
    def clip(self):
        if self._clip is None:
            self._clip = load_clip(self.cfg, self._store)
        return self._clip

    def uses_clip(self) -> bool:
        return any(m.kind in ("image", "tokens") for m in self.spec.modalities)

    def identity(self) -> str:
        return self.cfg.identity("clip") if self.uses_clip() else "identity"

    def feature_dims(self) -> dict[str, int]:
        """Width of each modality's frozen feature (CLIP projection dim or the flattened input)."""
        return {m.name: (self.cfg.projection_dim if self.cfg.source == "random" else self.clip.config.projection_dim)
                if m.kind in ("image", "tokens") else math.prod(m.shape) for m in self.spec.modalities}

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.spec.modalities:
            x = inputs[m.name]
            if m.kind == "image":
                px = prepare_images(x, self.clip.config.vision_config.image_size)
                out[f"f/{m.name}"] = _pooled(self.clip.get_image_features(pixel_values=px)).float()
            elif m.kind == "tokens":
                ids = x.long()[:, : self.clip.config.text_config.max_position_embeddings]
                out[f"f/{m.name}"] = _pooled(self.clip.get_text_features(input_ids=ids, attention_mask=text_attention(ids))).float()
            else:
                out[f"f/{m.name}"] = x.float().reshape(x.shape[0], -1)
        return out
