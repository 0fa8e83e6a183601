"""Datasets, client partitioning and missing-modality simulation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmfl.config import ExperimentConfig
from mmfl.data.missing import client_missing_rates, sample_presence
from mmfl.data.partition import partition
from mmfl.data.splits import load_dataset
from mmfl.data.dataset import DataSpec, ModalitySpec, MultimodalDataset
from mmfl.data.shards import ClientShards

__all__ = ["DataSpec", "ModalitySpec", "MultimodalDataset", "FederatedData", "ClientShards", "build_federated_data"]


@dataclass
class FederatedData:
    spec: DataSpec
    # Training shards with their missing-modality masks applied; a client's shard is built when
    # indexed (``ClientShards``), so a round materialises only its sampled clients.
    clients: ClientShards
    test: MultimodalDataset  # complete; test patterns are applied at evaluation


def build_federated_data(cfg: ExperimentConfig) -> FederatedData:
    """Deterministic in (config, seed): load, split, partition over clients, drop modalities.

    Samples left without any modality (``missing.drop_all_missing``) are removed from their shard.
    """
    train, test = load_dataset(cfg.data)
    parts = partition(train.labels.numpy(), cfg.partition, cfg.seed)
    rates = client_missing_rates(cfg.missing, len(parts), cfg.seed)

    def present(k: int, n: int) -> torch.Tensor:  # as simulate_missing draws client k's mask
        rng = np.random.default_rng([cfg.seed, 3, k])
        return torch.from_numpy(sample_presence(n, train.names, cfg.missing, rates[k], rng))

    return FederatedData(train.spec, ClientShards.from_pool(train, parts, present), test)
