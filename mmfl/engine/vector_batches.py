"""Padded batch schedules for training many clients in lock-step.

Clients of a round hold different numbers of samples, so they take different numbers of SGD
steps and their last batch is smaller. To train them together every client gets the same
number of steps ``S`` and the same batch width ``B``: the real batch order of each client is the
one of the per-client loop (``Method.train_local``: one ``torch.randperm`` per epoch from a
generator seeded with the client's seed, consecutive slices of ``batch_size``), and the padding
is described by two masks: ``weight`` (which batch slots hold a real sample) and ``active``
(which steps are real for a client). Padded slots point at sample 0 so that every gather stays
in range; their weight is zero, and an inactive step leaves the client's parameters and
momentum untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmfl.data.types import MultimodalDataset


@dataclass
class ChunkBatches:
    """Everything one chunk of clients needs for its local epochs, already gathered per step.

    ``inputs[name]``: (S, C, B, *shape); ``present``: (S, C, B, M); ``labels``: (S, C, B);
    ``weight``: (S, C, B) float, 1 for real samples; ``active``: (S, C) bool;
    ``steps``: (C,) number of real steps per client.
    """

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    active: torch.Tensor
    steps: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "ChunkBatches":
        return ChunkBatches(
            {k: v.to(device) for k, v in self.inputs.items()}, self.present.to(device), self.labels.to(device),
            self.weight.to(device), self.active.to(device), self.steps.to(device),
        )


def client_batch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """The sample indices of each local step, in the per-client loop's order."""
    gen = torch.Generator().manual_seed(seed)
    order = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        order.extend(perm[start : start + batch_size] for start in range(0, n, batch_size))
    return order


def build_chunk_batches(
    shards: Sequence[MultimodalDataset], seeds: Sequence[int], batch_size: int, epochs: int
) -> ChunkBatches:
    """Pad the batch schedules of ``shards`` to a common (steps, batch) grid and gather the data."""
    if len(shards) != len(seeds):
        raise ValueError(f"{len(shards)} shards but {len(seeds)} seeds")
    if not shards:
        raise ValueError("a chunk needs at least one client")
    for shard in shards:
        if len(shard) == 0:
            raise ValueError("a client shard is empty; every sampled client needs at least one sample")
    c = len(shards)
    width = min(batch_size, max(len(s) for s in shards))
    orders = [client_batch_order(len(s), batch_size, epochs, seed) for s, seed in zip(shards, seeds)]
    num_steps = max(len(o) for o in orders)
    index = torch.zeros(num_steps, c, width, dtype=torch.long)
    weight = torch.zeros(num_steps, c, width)
    active = torch.zeros(num_steps, c, dtype=torch.bool)
    for j, order in enumerate(orders):
        for s, idx in enumerate(order):
            index[s, j, : len(idx)] = idx
            weight[s, j, : len(idx)] = 1.0
            active[s, j] = True
    steps = torch.tensor([len(o) for o in orders], dtype=torch.long)

    def gather(get) -> torch.Tensor:
        # (C, S, B, ...) per client, then steps first so one step is a contiguous slice.
        return torch.stack([get(shard)[index[:, j]] for j, shard in enumerate(shards)], dim=1)

    names = shards[0].names
    inputs = {n: gather(lambda sh, n=n: sh.inputs[n]) for n in names}
    return ChunkBatches(inputs, gather(lambda sh: sh.present), gather(lambda sh: sh.labels), weight, active, steps)


def num_local_steps(n: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n / batch_size)
