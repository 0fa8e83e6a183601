"""Padded batch schedules for training many clients in lock-step.

Clients of a round hold different numbers of samples, so they take different numbers of SGD
steps and their last batch is smaller. To train them together every client gets the same
number of steps ``S`` and the same batch width ``B``: the real batch order of each client is the
one of the per-client loop (``Method.train_local``: one ``torch.randperm`` per epoch from a
generator seeded with the client's seed, consecutive slices of ``batch_size``), and the padding
is described by two masks: ``weight`` (which batch slots hold a real sample) and ``active``
(which steps are real for a client). Padded slots point at sample 0 so that every gather stays
in range; their weight is zero, and an inactive step leaves the client's parameters and
momentum untouched. A client without samples takes no step (as in the loop) and pads throughout.

The schedule (small integer grids) is built on the host; the samples themselves are gathered
where they live, so a trainer on a GPU keeps its clients' data there across rounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmfl.data.dataset import MultimodalDataset


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


@dataclass
class ChunkSchedule:
    """Which sample each (step, client, slot) reads: ``index`` (S, C, B) into the client's own shard."""

    index: torch.Tensor
    weight: torch.Tensor
    active: torch.Tensor
    steps: torch.Tensor


def chunk_schedule(sizes: Sequence[int], seeds: Sequence[int], batch_size: int | Sequence[int],
                   epochs: int | Sequence[int]) -> ChunkSchedule:
    """Pad the per-client batch orders of clients with ``sizes`` samples to a common (steps, batch) grid.

    ``batch_size`` and ``epochs`` are one value for every client or one per client (a method's
    ``local_batch_size`` may depend on the shard, e.g. 3FM's whole-shard batches).
    """
    if len(sizes) != len(seeds):
        raise ValueError(f"{len(sizes)} shards but {len(seeds)} seeds")
    if not sizes:
        raise ValueError("a chunk needs at least one client")
    if min(sizes) < 0:
        raise ValueError(f"a client shard has {min(sizes)} samples")
    c = len(sizes)
    sizes_b = [batch_size] * c if isinstance(batch_size, int) else list(batch_size)
    epochs_c = [epochs] * c if isinstance(epochs, int) else list(epochs)
    width = max(min(b, n) for b, n in zip(sizes_b, sizes))
    per_epoch = [math.ceil(n / b) for n, b in zip(sizes, sizes_b)]
    steps = torch.tensor([e * k for e, k in zip(epochs_c, per_epoch)], dtype=torch.long)
    num_steps = int(steps.max())
    index = torch.zeros(num_steps, c, width, dtype=torch.long)
    valid = torch.zeros(num_steps, c, width, dtype=torch.bool)
    for j, (n, seed) in enumerate(zip(sizes, seeds)):
        gen = torch.Generator().manual_seed(seed)
        b, ep = sizes_b[j], epochs_c[j]
        # The loop's order: one randperm per epoch, cut into consecutive batches of the batch size;
        # -1 marks the slots after the last sample of an epoch.
        padded = torch.full((ep, per_epoch[j] * b), -1, dtype=torch.long)
        for e in range(ep):
            padded[e, :n] = torch.randperm(n, generator=gen)
        grid = padded.reshape(ep * per_epoch[j], b)[:, : min(b, width)]
        index[: grid.shape[0], j, : grid.shape[1]] = grid.clamp_min(0)
        valid[: grid.shape[0], j, : grid.shape[1]] = grid >= 0
    active = torch.arange(num_steps).unsqueeze(1) < steps.unsqueeze(0)
    return ChunkSchedule(index, valid.to(torch.float32), active, steps)


def shard_tensors(shard: MultimodalDataset) -> dict[str, torch.Tensor]:
    """The tensors a chunk gathers from: one per modality, plus ``present`` and ``labels``."""
    return {**{f"input/{n}": shard.inputs[n] for n in shard.names}, "present": shard.present, "labels": shard.labels}


def gather_batches(data: Sequence[dict[str, torch.Tensor]], schedule: ChunkSchedule,
                   device: torch.device | str) -> ChunkBatches:
    """All batches of a chunk from the clients' tensors (``shard_tensors``, already on ``device``).

    The clients' samples are concatenated and read with one gather per tensor, so the data can
    stay on the device between rounds and only the small index grid travels.
    """
    device = torch.device(device)
    out = gather_rows(data, schedule, device)
    inputs = {k[len("input/"):]: v for k, v in out.items() if k.startswith("input/")}
    return ChunkBatches(inputs, out["present"], out["labels"], _to(schedule.weight, device),
                        _to(schedule.active, device), _to(schedule.steps, device))


def gather_rows(data: Sequence[dict[str, torch.Tensor]], schedule: ChunkSchedule,
                device: torch.device) -> dict[str, torch.Tensor]:
    """``(S, C, B, ...)`` per key: row ``schedule.index[s, c, b]`` of client ``c``'s tensor (one gather per key)."""
    sizes = [int(next(iter(d.values())).shape[0]) for d in data]
    offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
    # A padded slot reads row 0 of its client; a client without samples has none, so its slots
    # (all padding) read a neighbour's row instead, kept in range.
    flat_index = _to((schedule.index + offsets.view(1, -1, 1)).clamp_max(max(sum(sizes) - 1, 0)), device)
    return {key: torch.cat([d[key] for d in data]).index_select(0, flat_index.reshape(-1)).reshape(
        *flat_index.shape, *data[0][key].shape[1:]) for key in data[0]}


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to ``device``; to a GPU through pinned memory, without making the host wait."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def build_chunk_batches(
    shards: Sequence[MultimodalDataset], seeds: Sequence[int], batch_size: int, epochs: int
) -> ChunkBatches:
    """Pad the batch schedules of ``shards`` to a common (steps, batch) grid and gather the data (on the host)."""
    schedule = chunk_schedule([len(s) for s in shards], seeds, batch_size, epochs)
    return gather_batches([shard_tensors(s) for s in shards], schedule, "cpu")


def num_local_steps(n: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(n / batch_size)


def plan_chunks(steps: Sequence[int], max_chunk: int, waste: float = 0.25) -> list[list[int]]:
    """Positions of clients (with ``steps`` local steps each) grouped into chunks trained together.

    Clients are taken in order of their number of steps; a chunk holds at most ``max_chunk``
    clients and is closed before a client whose addition would make more than ``waste`` of the
    chunk's client-steps padding (a client with fewer steps than the chunk's longest idles
    through the rest, at full cost). Equal clients (the common case of a balanced partition)
    share one chunk; a skewed partition gets a few chunks of similar clients instead of one
    chunk in which the small clients mostly pad.
    """
    order = sorted(range(len(steps)), key=lambda i: steps[i])
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        s = max(int(steps[i]), 1)
        if current:
            slots = (len(current) + 1) * s  # the newcomer has the most steps: it sets the chunk's length
            if len(current) >= max_chunk or slots - (total + s) > waste * slots:
                chunks.append(current)
                current, total = [], 0
        current.append(i)
        total += s
    if current:
        chunks.append(current)
    return chunks
