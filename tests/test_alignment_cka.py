"""Linear CKA properties and Hungarian clustering alignment of prompt pools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfl.aggregation import weighted_mean
from mmfl.aggregation.alignment import align_and_aggregate, assign
from mmfl.aggregation.cka import cka_matrix, cka_weights, linear_cka


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_cka_self_is_one_and_invariant_to_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g, dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ _orthogonal(16, 1)) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(200, 10, generator=g, dtype=torch.float64)
    base = linear_cka(x, y)
    assert base < 0.5  # unrelated representations are far from 1
    assert linear_cka(x @ _orthogonal(16, 2), 3.0 * y @ _orthogonal(10, 3)) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


def test_cka_weights_downweight_the_outlier():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(100, 8, generator=g)
    similar = [base @ _orthogonal(8, s).float() + 0.05 * torch.randn(100, 8, generator=g) for s in range(3)]
    outlier = torch.randn(100, 8, generator=g)
    w = cka_weights(similar + [outlier])
    assert w.sum().item() == pytest.approx(1.0)
    assert w[3] < w[:3].min()
    sim = cka_matrix(similar + [outlier])
    assert torch.allclose(sim, sim.T) and torch.allclose(torch.diag(sim), torch.ones(4, dtype=torch.float64))
    # Sample counts act as a prior: more data, more weight at equal similarity.
    w2 = cka_weights(similar[:2], num_samples=[10, 30])
    assert w2[1] > w2[0]


def test_permuted_copies_are_matched_back_exactly():
    g = torch.Generator().manual_seed(2)
    centers = torch.randn(6, 4, 8, generator=g)  # 6 prompts of 4 tokens x 8 dims
    rng = np.random.default_rng(0)
    clients, perms = [], []
    for _ in range(4):
        perm = rng.permutation(6)
        perms.append(perm)
        clients.append(centers[perm] + 0.01 * torch.randn(6, 4, 8, generator=g))
    log_pop = torch.log_softmax(torch.zeros(6), 0)
    for prompts, perm in zip(clients, perms):
        # Client prompt i is a copy of centre perm[i], so it must be assigned to cluster perm[i].
        assert np.array_equal(assign(prompts, centers, log_pop), perm)
    res = align_and_aggregate(clients, centers + 0.2 * torch.randn(6, 4, 8, generator=g), torch.zeros(6), [10, 20, 30, 40])
    assert [a.tolist() for a in res.assignments] == [p.tolist() for p in perms]
    assert torch.allclose(res.centers, centers, atol=0.02)
    # Position-wise FedAvg of the same uploads mixes unrelated prompts.
    naive = weighted_mean([{"p": c} for c in clients], [10, 20, 30, 40])["p"]
    assert (naive - centers).abs().max() > 0.5


def test_popularity_term_moves_ambiguous_prompts_to_popular_clusters():
    centers = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    prompt = torch.tensor([[0.9, 0.0]])  # slightly closer to cluster 0
    popular_one = torch.log_softmax(torch.tensor([0.0, 3.0]), 0)
    assert assign(prompt, centers, popular_one, popularity_weight=0.0).tolist() == [0]
    assert assign(prompt, centers, popular_one, popularity_weight=0.5).tolist() == [1]
    # A prompt clearly belonging to a cluster stays there despite the bonus.
    assert assign(torch.tensor([[0.0, 0.1]]), centers, popular_one, popularity_weight=0.5).tolist() == [0]
    # Popularity is updated from the mass each cluster receives.
    res = align_and_aggregate([prompt, prompt.clone()], centers, torch.zeros(2), [1.0, 1.0])
    assert res.popularity[0] > res.popularity[1]


def test_one_to_one_per_client_and_clear_errors():
    centers = torch.randn(3, 5)
    same = centers[[0, 0, 0]]  # three copies of one prompt: still three distinct clusters
    a = assign(same, centers, torch.log_softmax(torch.zeros(3), 0))
    assert sorted(a.tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="num_clusters"):
        assign(torch.randn(4, 5), centers, torch.zeros(3))
