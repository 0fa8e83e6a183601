"""Datasets, client partitioning and missing-modality simulation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmfl.config import ExperimentConfig
from mmfl.data.missing import simulate_missing
from mmfl.data.partition import partition
from mmfl.data.splits import load_dataset
from mmfl.data.dataset import DataSpec, ModalitySpec, MultimodalDataset

__all__ = ["DataSpec", "ModalitySpec", "MultimodalDataset", "FederatedData", "build_federated_data"]


@dataclass
class FederatedData:
    spec: DataSpec
    clients: list[MultimodalDataset]  # training shards with their missing-modality masks applied
    test: MultimodalDataset  # complete; test patterns are applied at evaluation


def build_federated_data(cfg: ExperimentConfig) -> FederatedData:
    """Deterministic in (config, seed): load, split, partition over clients, drop modalities.

    Samples left without any modality (``missing.drop_all_missing``) are removed from their shard.
    """
    train, test = load_dataset(cfg.data)
    parts = partition(train.labels.numpy(), cfg.partition, cfg.seed)
    shards = [train.subset(p) for p in parts]
    masks = simulate_missing([len(s) for s in shards], train.names, cfg.missing, cfg.seed)
    clients = []
    for shard, mask in zip(shards, masks):
        keep = mask.any(dim=1)
        if not bool(keep.all()):
            idx = torch.nonzero(keep).flatten()
            shard, mask = shard.subset(idx), mask[idx]
        clients.append(shard.with_present(mask))
    return FederatedData(train.spec, clients, test)
