"""Split training samples over clients: IID or Dirichlet label skew."""

from __future__ import annotations

import numpy as np

from mmfl.config import PartitionConfig
from mmfl.errors import ConfigError


def iid_partition(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(num_samples)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split: for each class c, proportions p_c ~ Dir(alpha * 1_N) over the N clients.

    Draws are repeated until every client holds at least ``min_size`` samples (the usual
    practice), so the result is a Dirichlet draw conditioned on that event.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if min_size * num_clients > len(labels):
        raise ConfigError(
            f"partition.min_client_size = {min_size}: {num_clients} clients x {min_size} exceeds "
            f"{len(labels)} training samples"
        )
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ConfigError(
        f"partition.alpha = {alpha}: no Dirichlet split gave every one of {num_clients} clients "
        f"min_client_size = {min_size} samples in {max_tries} draws; raise alpha or lower min_client_size"
    )


def partition(labels: np.ndarray, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 1])
    if cfg.num_clients > len(labels):
        raise ConfigError(f"partition.num_clients = {cfg.num_clients} exceeds the {len(labels)} training samples")
    if cfg.scheme == "iid":
        return iid_partition(len(labels), cfg.num_clients, rng)
    return dirichlet_partition(labels, cfg.num_clients, cfg.alpha, rng, cfg.min_client_size)
