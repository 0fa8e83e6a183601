"""The benchmark workloads W and W-large: data, model and method, all seeded.

W: 3 modalities (dims 64/128/32), 10 classes, 64 clients x 128 samples, 30% of the samples miss
one random modality (its embedding replaced by a learned placeholder), three MLP encoders
d -> h -> h, concatenation -> h -> 10 (h = 128: 129,546 parameters), 1 local epoch, batch 32,
SGD lr 0.05 momentum 0.9, FedAvg. W-large: 256 clients, h = 512 (about 1.7M parameters), batch 64.

Every client's shard is generated from (seed, client id) alone, so a Flower client process can
rebuild exactly the shard the in-process engines train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, ModalitySpec, MultimodalDataset
from mmfl.state import RoundState
from mmfl.methods.base import derive_seed
from mmfl.methods.fedavg import FedAvg
from mmfl.methods import parse_experiment


@dataclass(frozen=True)
class Workload:
    name: str
    clients: int
    samples: int
    hidden: int
    batch_size: int
    dims: tuple[int, ...] = (64, 128, 32)
    classes: int = 10
    missing_rate: float = 0.3
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0

    @property
    def spec(self) -> DataSpec:
        return DataSpec(tuple(ModalitySpec(f"m{i}", (d,)) for i, d in enumerate(self.dims)), self.classes)


WORKLOADS = {
    "W": Workload("W", clients=64, samples=128, hidden=128, batch_size=32),
    "W-large": Workload("W-large", clients=256, samples=128, hidden=512, batch_size=64),
}


class WorkloadNet(nn.Module):
    """Three MLP encoders d -> h -> h, learned placeholders for missing modalities, concat -> h -> classes."""

    def __init__(self, spec: DataSpec, hidden: int):
        super().__init__()
        self.names = spec.names
        self.encoders = nn.ModuleDict({
            m.name: nn.Sequential(nn.Linear(m.shape[0], hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            for m in spec.modalities
        })
        self.placeholders = nn.Parameter(torch.zeros(len(self.names), hidden))
        self.head = nn.Sequential(nn.Linear(len(self.names) * hidden, hidden), nn.ReLU(), nn.Linear(hidden, spec.num_classes))

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        emb = torch.stack([self.encoders[n](inputs[n]) for n in self.names], dim=1)
        emb = torch.where(present.unsqueeze(-1), emb, self.placeholders.unsqueeze(0).expand_as(emb))
        return self.head(emb.flatten(1))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class WorkloadMethod(FedAvg):
    """FedAvg on ``WorkloadNet``: plain local SGD, so the vectorized engine reproduces it."""

    name = "fedavg"
    vectorizable = True

    def __init__(self, workload: Workload):
        self.workload = workload

    def build_model(self, spec: DataSpec, cfg: ExperimentConfig, resources=None) -> nn.Module:
        return WorkloadNet(spec, self.workload.hidden)


def make_config(w: Workload, engine: str = "loop", device: str = "cpu", chunk: int = 64, compile: bool = False) -> ExperimentConfig:
    return parse_experiment({
        "name": f"bench-{w.name}", "seed": w.seed,
        "partition": {"num_clients": w.clients},
        "train": {"rounds": 1000, "local_epochs": 1, "batch_size": w.batch_size, "lr": w.lr, "momentum": w.momentum,
                  "engine": engine, "device": device, "vector_chunk": chunk, "compile": compile},
        "tracking": {"enabled": False},
    })


def class_means(w: Workload) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(derive_seed(w.seed, 1))
    return [torch.randn(w.classes, d, generator=gen) for d in w.dims]


def make_shard(w: Workload, client: int, means: list[torch.Tensor] | None = None) -> MultimodalDataset:
    """Client ``client``'s samples: class-conditional Gaussians, 30% missing one random modality."""
    means = means if means is not None else class_means(w)
    gen = torch.Generator().manual_seed(derive_seed(w.seed, 2, client))
    n, m = w.samples, len(w.dims)
    labels = torch.randint(0, w.classes, (n,), generator=gen)
    inputs = {f"m{i}": means[i][labels] + torch.randn(n, d, generator=gen) for i, d in enumerate(w.dims)}
    present = torch.ones(n, m, dtype=torch.bool)
    missing = torch.rand(n, generator=gen) < w.missing_rate
    which = torch.randint(0, m, (n,), generator=gen)
    present[missing, which[missing]] = False
    for i in range(m):
        inputs[f"m{i}"][~present[:, i]] = 0.0
    return MultimodalDataset(w.spec, inputs, labels, present)


def make_shards(w: Workload) -> dict[int, MultimodalDataset]:
    means = class_means(w)
    return {c: make_shard(w, c, means) for c in range(w.clients)}


def initial_state(w: Workload) -> RoundState:
    method = WorkloadMethod(w)
    return method.init_state(w.spec, make_config(w))
