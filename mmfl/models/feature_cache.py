"""Features of frozen backbones, computed once per sample and reused across rounds and runs.

A frozen backbone maps the same sample to the same features in every round, so running it again
each round (and again on every resumed or repeated run) is wasted work; with a ViT-sized model it
dominates the cost of a round. Entries are keyed by

    (backbone id, dataset id, sample index)

where the backbone id hashes everything that determines the backbone's output (architecture,
weights source, seed) and the dataset id hashes the content of the samples (inputs and presence
mask), so a changed dataset or backbone can never hit a stale entry. Rows of one dataset are stored
together as one safetensors file ``feature-cache/<backbone id>/<dataset id>.safetensors`` in an
``ArtifactStore`` (a local directory or the bucket, so pods of a pipeline share it), with an
in-process layer in front so that a local run reads the store at most once per dataset.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch


log = logging.getLogger(__name__)

ComputeFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def dataset_fingerprint(inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None) -> str:
    """Content hash of a batch of samples: names, shapes, dtypes and bytes of every tensor."""
    h = hashlib.sha256()
    items = sorted(inputs.items())
    if present is not None:
        items.append(("__present__", present.to(torch.uint8)))
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


class FeatureCache:
    """Memory (LRU) in front of an optional ``ArtifactStore``.

    ``get_or_compute(backbone_id, dataset_id, n, compute)`` returns a dict of (n, ...) tensors;
    ``compute(indices)`` is called only for datasets seen for the first time, in batches.
    ``computed_rows`` counts rows that went through ``compute`` (used to check the cache works).
    """

    def __init__(self, store=None, prefix: str = "feature-cache", max_entries: int = 256):
        self.store = store
        self.prefix = prefix
        self.max_entries = max_entries
        self._memory: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self.computed_rows = 0

    def key(self, backbone_id: str, dataset_id: str) -> str:
        return f"{self.prefix}/{backbone_id}/{dataset_id}.safetensors"

    def _remember(self, k: tuple[str, str], value: dict[str, torch.Tensor]) -> None:
        self._memory[k] = value
        self._memory.move_to_end(k)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def get_or_compute(
        self, backbone_id: str, dataset_id: str, n: int, compute: ComputeFn, batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        k = (backbone_id, dataset_id)
        if k in self._memory:
            self._memory.move_to_end(k)
            return self._memory[k]
        key = self.key(backbone_id, dataset_id)
        if self.store is not None and self.store.exists(key):
            value = self.store.get_tensors(key)
            if all(v.shape[0] == n for v in value.values()):
                self._remember(k, value)
                return value
            log.warning("feature cache entry %s has the wrong number of rows; recomputing", key)
        parts: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            for start in range(0, n, batch_size):
                idx = torch.arange(start, min(n, start + batch_size))
                parts.append({name: t.detach().cpu() for name, t in compute(idx).items()})
                self.computed_rows += len(idx)
        value = {name: torch.cat([p[name] for p in parts]) for name in parts[0]} if parts else {}
        if self.store is not None:
            self.store.put_tensors(key, value)
        self._remember(k, value)
        return value


def cached_features(
    cache: FeatureCache | None, backbone_id: str, inputs: Mapping[str, torch.Tensor], present: torch.Tensor,
    compute: Callable[[dict[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]], batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Features of every row of ``inputs``; through the cache when there is one."""
    n = int(present.shape[0])

    def rows(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return compute({k: v[idx] for k, v in inputs.items()}, present[idx])

    if cache is None:
        with torch.no_grad():
            parts = [rows(torch.arange(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return cache.get_or_compute(backbone_id, dataset_fingerprint(inputs, present), n, rows, batch_size)
