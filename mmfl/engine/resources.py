"""What the engine hands to methods: the artifact store for ``store://`` weights and feature caches.

Methods open nothing themselves; one ``Resources`` per storage location and process, so that
frozen features computed once are reused by every client and round of the process.
"""

from __future__ import annotations

from mmfl.config import ExperimentConfig
from mmfl.io import store_of
from mmfl.methods.base import Resources
from mmfl.models.feature_cache import FeatureCache

_RESOURCES: dict[tuple[str, str | None, str, str], Resources] = {}


def device_of(cfg: ExperimentConfig) -> str:
    """The torch device of ``train.device`` here: ``auto`` is CUDA when torch sees one, else the CPU."""
    if cfg.train.device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.train.device


def resources_for(cfg: ExperimentConfig) -> Resources:
    """The store and the caches (``store``: persisted in the artifact store; ``memory``) of ``cfg.storage``."""
    s = cfg.storage
    where = (s.kind, s.endpoint, s.bucket, s.root)
    found = _RESOURCES.get(where)
    if found is None:
        store = store_of(s)
        found = _RESOURCES[where] = Resources(store, {"store": FeatureCache(store), "memory": FeatureCache(None)})
    return found
