"""Frozen Hugging Face backbones (ViLT, CLIP) for the foundation-model methods.

Two sources, chosen by ``BackboneConfig.source``:
- ``random``: the real transformers class with a small random configuration, initialised from a
  seed, so tests and offline runs need no weights and every process rebuilds the same backbone;
- ``pretrained``: ``from_pretrained(path)`` where path is a local directory, ``store://<prefix>``
  (files under that prefix of the artifact store/bucket are downloaded to a local directory first),
  or a hub id (only where the cluster can reach the hub).

Backbones are frozen (no gradients, eval mode) and never travel between server and clients; they
are rebuilt (or loaded) from the configuration, which is why they are memoised per process.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mmfl.errors import ConfigError

STORE_SCHEME = "store://"


class BackboneConfig(BaseModel):
    """Which frozen backbone to use; defaults are a tiny random model (document any change)."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["random", "pretrained"] = Field("random", description="random tiny config, or from_pretrained(path)")
    path: str | None = Field(None, description="Local dir, store://<prefix> or hub id (source=pretrained)")
    hidden: int = Field(32, ge=8, description="Hidden size of the random config")
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    intermediate: int = Field(64, ge=8)
    image_size: int = Field(32, ge=8, description="Images are resized to image_size x image_size")
    patch_size: int = Field(8, ge=2)
    max_text_len: int = Field(40, ge=2)
    vocab_size: int = Field(30522, ge=2, description="BERT uncased vocabulary, as in ViLT and MiniLM")
    projection_dim: int = Field(32, ge=2, description="CLIP joint-space size of the random config")
    init_range: float = Field(0.02, gt=0, description="Std of the random init (HF default 0.02; larger mixes more)")
    seed: int = Field(1234, description="Seed of the random initialisation (independent of the experiment seed)")

    def identity(self, kind: str) -> str:
        """Stable id of the backbone's function: hash of the config (path instead of init for pretrained)."""
        payload = {"kind": kind, **self.model_dump()}
        if self.source == "pretrained":
            payload = {"kind": kind, "source": "pretrained", "path": self.path, "image_size": self.image_size,
                       "max_text_len": self.max_text_len}
        return f"{kind}-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def resolve_pretrained(path: str | None, store=None, cache_dir: str | None = None) -> str:
    """A local directory (or hub id) for ``from_pretrained``; ``store://`` paths are downloaded first."""
    if not path:
        raise ConfigError("backbone.path = None: source=pretrained needs a local dir, store://<prefix> or a hub id")
    if path.startswith(STORE_SCHEME):
        if store is None:
            raise ConfigError(f"backbone.path = {path!r}: a store:// path needs an artifact store")
        prefix = path[len(STORE_SCHEME):].strip("/")
        keys = store.list(prefix)
        if not keys:
            raise ConfigError(f"backbone.path = {path!r}: no files under that prefix of the store")
        root = Path(cache_dir or os.environ.get("MMFL_CACHE", Path.home() / ".cache" / "mmfl"))
        target = root / "backbones" / hashlib.sha256(path.encode()).hexdigest()[:16]
        for key in keys:
            dest = target / key[len(prefix):].lstrip("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".tmp-{dest.name}")
                tmp.write_bytes(store.get_bytes(key))
                tmp.replace(dest)
        return str(target)
    return path


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _seeded(cfg: BackboneConfig, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build()


@lru_cache(maxsize=8)
def _vilt(cfg_json: str, resolved: str | None) -> nn.Module:
    from transformers import ViltConfig, ViltModel

    cfg = BackboneConfig.model_validate_json(cfg_json)
    if cfg.source == "pretrained":
        return _freeze(ViltModel.from_pretrained(resolved))
    config = ViltConfig(
        hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate, image_size=cfg.image_size, patch_size=cfg.patch_size,
        max_position_embeddings=cfg.max_text_len, vocab_size=cfg.vocab_size, max_image_length=-1,
        initializer_range=cfg.init_range,
    )
    return _freeze(_seeded(cfg, lambda: ViltModel(config)))


@lru_cache(maxsize=8)
def _clip(cfg_json: str, resolved: str | None) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    cfg = BackboneConfig.model_validate_json(cfg_json)
    if cfg.source == "pretrained":
        return _freeze(CLIPModel.from_pretrained(resolved))
    common = dict(hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                  intermediate_size=cfg.intermediate, initializer_range=cfg.init_range)
    config = CLIPConfig(
        text_config=dict(common, vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_text_len,
                         pad_token_id=0, bos_token_id=101, eos_token_id=102),  # BERT [CLS]/[SEP] ids
        vision_config=dict(common, image_size=cfg.image_size, patch_size=cfg.patch_size),
        projection_dim=cfg.projection_dim,
    )
    return _freeze(_seeded(cfg, lambda: CLIPModel(config)))


def load_vilt(cfg: BackboneConfig, store=None) -> nn.Module:
    """Frozen ``ViltModel``: tiny random (seeded) or ``from_pretrained``; memoised per process."""
    resolved = resolve_pretrained(cfg.path, store) if cfg.source == "pretrained" else None
    return _vilt(cfg.model_dump_json(), resolved)


def load_clip(cfg: BackboneConfig, store=None) -> nn.Module:
    """Frozen ``CLIPModel`` (image and text towers with projections); memoised per process."""
    resolved = resolve_pretrained(cfg.path, store) if cfg.source == "pretrained" else None
    return _clip(cfg.model_dump_json(), resolved)


def prepare_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, 3, size, size): grey images get three channels, then bilinear resize."""
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"images need 1 or 3 channels, got {x.shape[1]}")
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def text_attention(ids: torch.Tensor) -> torch.Tensor:
    """Attention mask of token ids (pad = 0); the first position always attends, so an absent
    (all-pad) text still yields a valid sequence."""
    mask = (ids != 0).long()
    mask[:, 0] = 1
    return mask


def frozen_projection(in_dim: int, out_dim: int, seed: int) -> torch.Tensor:
    """A fixed random (in_dim, out_dim) map with orthonormal columns where possible.

    Lets a modality given as precomputed features (e.g. MiniLM sentence embeddings) enter a
    backbone that expects tokens of another width, without adding trainable parameters.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=g)
    q, _ = torch.linalg.qr(a)
    return q if in_dim >= out_dim else q.T
