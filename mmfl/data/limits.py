"""Partition limits checked from the config alone, before any data is read or a tracker starts.

The sizes of the shipped datasets are known without loading them, so a partition that cannot
work (more clients than samples, ``num_clients x min_client_size`` above the training set, or so
few samples per client that a local epoch is a single optimiser step) is reported at once, in one
line naming the field and the value. Datasets read from a user directory (food101, mmimdb, or
``data.path``) have no known size and are checked when they are loaded (``data/partition.py``).
"""

from __future__ import annotations

import logging
import math

from mmfl.config import ExperimentConfig
from mmfl.errors import ConfigError

log = logging.getLogger(__name__)

# Samples in the shipped copies (data/sources.py, data/minilm_text.py).
SHIPPED_SIZES = {"mfeat": 2000, "basicmotions": 80, "mfeat_text": 2000}
_MFEAT_CLASSES = 10


def known_size(cfg: ExperimentConfig) -> int | None:
    """Samples of the configured dataset before the train/test split, when known without reading it."""
    d = cfg.data
    if d.name == "synthetic":
        return d.synthetic.num_samples
    if d.path is not None or d.name not in SHIPPED_SIZES:
        return None
    n = SHIPPED_SIZES[d.name]
    if d.name == "mfeat_text" and d.image_text.max_per_class is not None:
        n = _MFEAT_CLASSES * min(d.image_text.max_per_class, n // _MFEAT_CLASSES)
    return n


def train_size(cfg: ExperimentConfig) -> int | None:
    """Training samples after the stratified split (the test set is ``ceil(test_fraction * n)``)."""
    n = known_size(cfg)
    return None if n is None else n - math.ceil(cfg.data.test_fraction * n)


def check_partition_limits(cfg: ExperimentConfig) -> list[str]:
    """Raise ConfigError (one line) when the partition cannot work; return warnings about weak ones."""
    n = train_size(cfg)
    if n is None:
        return []
    total = known_size(cfg)
    if n < 1 or n == total:
        raise ConfigError(f"data.test_fraction = {cfg.data.test_fraction}: leaves {n} of {total} samples of "
                          f"{cfg.data.name} for training; choose a fraction that keeps both splits non-empty")
    p = cfg.partition
    where = f"{cfg.data.name} has {n} training samples"
    if p.num_clients > n:
        raise ConfigError(f"partition.num_clients = {p.num_clients}: {where}; use at most {n} clients")
    if p.scheme == "dirichlet" and p.num_clients * p.min_client_size > n:
        raise ConfigError(
            f"partition.min_client_size = {p.min_client_size}: {p.num_clients} clients x {p.min_client_size} exceeds "
            f"{n} ({where}); lower partition.num_clients or partition.min_client_size")
    warnings = []
    per_client = n / p.num_clients
    steps = math.ceil(per_client / cfg.train.batch_size)
    if steps <= 1:
        warnings.append(
            f"train.batch_size = {cfg.train.batch_size}: a client holds {per_client:.0f} samples on average "
            f"({where}, {p.num_clients} clients), so a local epoch is {steps} optimiser step; "
            "lower train.batch_size or partition.num_clients")
    return warnings


__all__ = ["SHIPPED_SIZES", "check_partition_limits", "known_size", "train_size"]
