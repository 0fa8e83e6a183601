"""Bayesian-nonparametric prompt matching (FED-PRIME's inter-prompt aggregation) on constructed prompts."""

from __future__ import annotations

import pytest
import torch

from mmfl.aggregation.nonparametric import MatchingConfig, match_prompts

D = 16


def patterns(k: int, seed: int = 0) -> torch.Tensor:
    """k well-separated unit-RMS prompt patterns."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(k, D, generator=g)
    return p / p.pow(2).mean(dim=1, keepdim=True).sqrt()


def clients_with(base: torch.Tensor, per_client: list[list[int]], noise: float = 0.02, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.stack([base[k] + noise * torch.randn(D, generator=g) for k in ks]) if ks else torch.zeros(0, D)
            for ks in per_client]


def test_similar_prompts_from_different_clients_merge():
    base = patterns(3)
    # Every client holds the three patterns, each at a different pool position.
    orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1], [2, 1, 0]]
    clients = clients_with(base, orders)
    res = match_prompts(clients)
    assert res.prompts.shape == (3, D)
    assert res.clients.tolist() == [5, 5, 5]
    # Prompts of the same pattern land in the same global prompt, whatever their position.
    for k in range(3):
        targets = {int(res.assignments[t][order.index(k)]) for t, order in enumerate(orders)}
        assert len(targets) == 1
        g = targets.pop()
        members = torch.stack([clients[t][order.index(k)] for t, order in enumerate(orders)])
        assert torch.allclose(res.prompts[g], members.mean(0), atol=1e-5)
        assert (res.prompts[g] - base[k]).norm() < 0.05 * base[k].norm()
    # Position-wise averaging of the same uploads mixes unrelated prompts.
    naive = torch.stack(clients).mean(0)
    assert min((naive[j] - base[k]).norm() for j in range(3) for k in range(3)) > 0.3 * base[0].norm()


def test_dissimilar_prompts_stay_separate():
    base = patterns(6)
    res = match_prompts(clients_with(base, [[0, 1], [2, 3], [4, 5]]))
    assert res.prompts.shape[0] == 6
    assert res.clients.tolist() == [1] * 6
    # Independent random prompts: nothing merges.
    g = torch.Generator().manual_seed(3)
    res = match_prompts([torch.randn(4, D, generator=g) for _ in range(5)])
    assert res.prompts.shape[0] == 20


def test_shared_and_client_specific_patterns():
    base = patterns(4)
    res = match_prompts(clients_with(base, [[0, 1], [0, 1], [0, 1], [0, 1, 3]]))
    assert sorted(res.clients.tolist(), reverse=True) == [4, 4, 1]
    assert res.clients.tolist() == sorted(res.clients.tolist(), reverse=True)  # most clients first
    # The learned popularity ranks the shared prompts above the one client's own pattern.
    assert float(res.popularity[:2].min()) > float(res.popularity[2])


def test_global_pool_grows_and_shrinks_with_the_data():
    base = patterns(5)
    sizes = []
    for ks in ([0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4], [2, 3]):
        res = match_prompts(clients_with(base, [ks] * 4, seed=len(ks)))
        sizes.append(res.prompts.shape[0])
    assert sizes == [2, 4, 5, 2]


def test_popularity_changes_the_outcome():
    # Nine clients share pattern A; a tenth client's prompt lies at a borderline distance from it.
    a = patterns(1)[0]
    g = torch.Generator().manual_seed(5)
    e = torch.randn(D, generator=g)
    e = e / e.norm()
    sizes = {}
    for r in (0.5, 1.025, 1.6):
        clients = [a.unsqueeze(0).clone() for _ in range(9)] + [(a + r * e).unsqueeze(0)]
        sizes[r] = [match_prompts(clients, MatchingConfig(popularity_weight=w)).prompts.shape[0] for w in (0.0, 1.0)]
    assert sizes[0.5] == [1, 1]  # close: merges either way
    assert sizes[1.6] == [2, 2]  # far: separate either way
    assert sizes[1.025] == [2, 1]  # borderline: only the popular cluster's pull merges it


def test_assignments_are_one_to_one_per_client():
    base = patterns(2)
    # Client 0 holds two copies of pattern 0: they may not share a global prompt.
    clients = clients_with(base, [[0, 0], [0, 1], [0, 1], [1]], noise=0.01)
    res = match_prompts(clients)
    for t, a in enumerate(res.assignments):
        assert len(a) == clients[t].shape[0]
        assert len(set(a.tolist())) == len(a), f"client {t}: {a}"
        assert a.min() >= 0 and a.max() < res.prompts.shape[0]
    assert res.assignments[0][0] != res.assignments[0][1]
    assert int(res.clients.sum()) == sum(c.shape[0] for c in clients)


def test_scale_invariant_deterministic_and_uneven_clients():
    base = patterns(3)
    clients = clients_with(base, [[0, 1, 2], [1], [], [2, 0]])
    assert clients[2].shape == (0, D)
    first = match_prompts(clients)
    again = match_prompts(clients)
    scaled = match_prompts([c * 0.03 for c in clients])
    assert [a.tolist() for a in first.assignments] == [a.tolist() for a in again.assignments]
    assert torch.equal(first.prompts, again.prompts)
    assert [a.tolist() for a in first.assignments] == [a.tolist() for a in scaled.assignments]
    assert torch.allclose(scaled.prompts, first.prompts * 0.03, atol=1e-6)
    assert first.assignments[2].shape == (0,)
    assert first.prompts.shape[0] == 3


def test_single_client_keeps_its_prompts_and_prompt_shape():
    g = torch.Generator().manual_seed(7)
    prompts = torch.randn(4, 2, 8, generator=g)  # (n, tokens, hidden)
    res = match_prompts([prompts])
    assert res.prompts.shape == (4, 2, 8)
    for j, g_idx in enumerate(res.assignments[0]):
        assert torch.allclose(res.prompts[g_idx], prompts[j], atol=1e-6)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least one client"):
        match_prompts([])
    with pytest.raises(ValueError, match="client 1"):
        match_prompts([torch.zeros(2, 4), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="no client sent"):
        match_prompts([torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="sigma_floor"):
        MatchingConfig(sigma_floor=0.0)
