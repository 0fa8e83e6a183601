"""IID and Dirichlet splits have the requested statistics."""

import numpy as np
import pytest

from mmfl.config import PartitionConfig
from mmfl.data.partition import dirichlet_partition, iid_partition, partition
from mmfl.errors import ConfigError


def _assign_check(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n


def test_iid_partition_covers_every_sample_once_with_equal_sizes():
    parts = iid_partition(1003, 10, np.random.default_rng(0))
    _assign_check(parts, 1003)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_client_shares_have_dirichlet_mean_and_variance():
    # Client k's share of a class is marginally Beta(alpha, (N-1) alpha): mean 1/N,
    # variance (1/N)(1-1/N)/(N alpha + 1). Checked over many classes and draws.
    num_clients, alpha, per_class = 5, 0.5, 1000
    labels = np.repeat(np.arange(10), per_class)
    shares = []
    for seed in range(60):
        parts = dirichlet_partition(labels, num_clients, alpha, np.random.default_rng(seed), min_size=1)
        _assign_check(parts, len(labels))
        for c in range(10):
            shares.extend(np.sum(labels[p] == c) / per_class for p in parts)
    shares = np.asarray(shares)
    expected_var = (1 / num_clients) * (1 - 1 / num_clients) / (num_clients * alpha + 1)
    assert abs(shares.mean() - 1 / num_clients) < 1e-9  # shares of a class sum to one
    assert abs(shares.var() / expected_var - 1) < 0.15


def test_small_alpha_skews_labels_more_than_large_alpha():
    labels = np.repeat(np.arange(10), 200)

    def mean_tv(alpha):
        parts = dirichlet_partition(labels, 10, alpha, np.random.default_rng(1), min_size=5)
        dists = [np.bincount(labels[p], minlength=10) / len(p) for p in parts]
        return float(np.mean([0.5 * np.abs(d - 0.1).sum() for d in dists]))

    assert mean_tv(0.1) > 0.6
    assert mean_tv(100.0) < 0.15


def test_min_client_size_is_respected_and_impossible_requests_fail_clearly():
    labels = np.repeat(np.arange(4), 50)
    parts = partition(labels, PartitionConfig(num_clients=8, alpha=0.3, min_client_size=10), seed=3)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(ConfigError, match="min_client_size = 30"):
        partition(labels, PartitionConfig(num_clients=8, alpha=0.3, min_client_size=30), seed=3)
    with pytest.raises(ConfigError, match="num_clients = 500"):
        partition(labels, PartitionConfig(num_clients=500), seed=0)


def test_partition_is_deterministic_in_the_seed():
    labels = np.repeat(np.arange(5), 40)
    cfg = PartitionConfig(num_clients=4, alpha=0.5)
    a, b, c = partition(labels, cfg, 7), partition(labels, cfg, 7), partition(labels, cfg, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
