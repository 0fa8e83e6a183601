"""Client shards materialised on demand: a round's cost follows the sampled clients, not the population.

``ClientShards`` is a read-only sequence of client datasets (``shards[k]``, ``len``, iteration)
that builds client ``k``'s dataset only when it is indexed, from a factory, and keeps no
per-client object for clients that are not asked for. The data layer backs it with the pooled
training set, one flat index array grouped by client and its offsets (two arrays for any number
of clients); each client's missing-modality mask is drawn from (seed, client) when the client is
materialised, so the shards equal those built eagerly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from mmfl.data.dataset import MultimodalDataset


class ClientShards(Sequence):
    """``num_clients`` client datasets, client ``k``'s built by ``make(k)`` when indexed.

    ``sizes`` (optional) gives every client's sample count without materialising it. The
    ``keep`` most recently used shards are kept (a client indexed again in the same round, or
    every client of a small population, is built once, and a device-resident copy of its
    samples stays valid); older ones are dropped. ``materialized`` counts the builds per client
    id (only ids that were built appear).
    """

    def __init__(self, num_clients: int, make: Callable[[int], MultimodalDataset],
                 sizes: np.ndarray | None = None, keep: int = 1024):
        self._n = int(num_clients)
        self._make = make
        self._sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64)
        self._keep = int(keep)
        self._recent: OrderedDict[int, MultimodalDataset] = OrderedDict()
        self.materialized: dict[int, int] = {}

    @classmethod
    def from_pool(cls, pool: MultimodalDataset, parts: Sequence[np.ndarray],
                  present: Callable[[int, int], torch.Tensor] | None = None, keep: int = 1024) -> "ClientShards":
        """Client ``k`` holds ``pool``'s samples ``parts[k]``; ``present(k, n)`` its presence mask.

        Samples the mask leaves without any modality are removed from the shard (so with a mask,
        a client's size is known once it is built).
        """
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        order = torch.from_numpy(np.concatenate(parts).astype(np.int64)) if len(parts) else torch.zeros(0, dtype=torch.long)

        def make(k: int) -> MultimodalDataset:
            shard = pool.subset(order[offsets[k]:offsets[k + 1]])
            if present is None:
                return shard
            mask = present(k, len(shard))
            keep_rows = mask.any(dim=1)
            if not bool(keep_rows.all()):
                idx = torch.nonzero(keep_rows).flatten()
                shard, mask = shard.subset(idx), mask[idx]
            return shard.with_present(mask)

        return cls(len(parts), make, sizes if present is None else None, keep)

    def __len__(self) -> int:
        return self._n

    def size(self, k: int) -> int:
        """Client ``k``'s sample count (without materialising it when sizes are known)."""
        return int(self._sizes[k]) if self._sizes is not None else len(self[k])

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self._n))]
        k = int(k)
        if k < 0:
            k += self._n
        if not 0 <= k < self._n:
            raise IndexError(f"client {k} out of range for {self._n} clients")
        found = self._recent.get(k)
        if found is not None:
            self._recent.move_to_end(k)
            return found
        self.materialized[k] = self.materialized.get(k, 0) + 1
        shard = self._make(k)
        if self._keep > 0:
            self._recent[k] = shard
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
        return shard

    def __iter__(self) -> Iterator[MultimodalDataset]:
        return (self[k] for k in range(self._n))
