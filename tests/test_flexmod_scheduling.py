"""FlexMod's scheduling parts: Shapley values, encoder quality, allocation constraints, DDPG persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfl.io.codec import json_from_bytes, json_to_bytes, tensors_from_bytes, tensors_to_bytes
from mmfl.errors import ConfigError
from mmfl.methods.flexmod import combination_weights
from mmfl.scheduling import (
    DDPGAgent, DDPGConfig, allocate_frequencies, encoder_quality, modality_combinations, normalized_importance,
    shapley_values, step_plan,
)
from mmfl.scheduling.allocation import step_counts


def test_shapley_of_additive_game_is_each_players_own_value():
    own = [0.3, 0.1, 0.5]
    phi = shapley_values(3, lambda s: sum(own[i] for i in s))
    np.testing.assert_allclose(phi, own)


def test_shapley_of_symmetric_and_dummy_games():
    # symmetric: value depends on coalition size only -> equal shares of v(N)
    phi = shapley_values(3, lambda s: len(s) ** 2)
    np.testing.assert_allclose(phi, [3.0, 3.0, 3.0])
    # two-player "only together" game: v({0,1}) = 1, else 0 -> 1/2 each; a third dummy player gets 0
    phi = shapley_values(3, lambda s: 1.0 if {0, 1} <= s else 0.0)
    np.testing.assert_allclose(phi, [0.5, 0.5, 0.0], atol=1e-12)
    # efficiency: values sum to v(N) - v(empty)
    v = {frozenset(): 0.1, frozenset({0}): 0.6, frozenset({1}): 0.4, frozenset({0, 1}): 0.9}
    phi = shapley_values(2, v.__getitem__)
    np.testing.assert_allclose(phi, [0.5 * (0.5 + 0.5), 0.5 * (0.3 + 0.3)])
    assert phi.sum() == pytest.approx(0.8)
    np.testing.assert_allclose(normalized_importance([2.0, -1.0, 2.0]), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(normalized_importance([-1.0, 0.0]), [0.5, 0.5])


def test_encoder_quality_from_prototype_similarity():
    counts = torch.ones(3)
    assert encoder_quality(torch.eye(3), counts) == pytest.approx(0.5)  # orthogonal classes
    assert encoder_quality(torch.ones(3, 4), counts) == pytest.approx(0.0)  # collapsed encoder
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert encoder_quality(opposite, torch.ones(2)) == pytest.approx(1.0)
    # classes without samples are ignored
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert encoder_quality(protos, torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(0.5)


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocation_satisfies_its_constraints(m, seed):
    rng = np.random.default_rng(seed)
    combos = modality_combinations(m)
    assert [len(c) for c in combos] == sorted((len(c) for c in combos), reverse=True)
    assert len(combos) == 2**m - 1
    imp = normalized_importance(rng.random(m))
    quality = rng.random(m)
    budget, min_freq = 0.7, 0.05
    for beta in (0.0, 0.5, 1.0):
        x = allocate_frequencies(combination_weights(beta, imp, quality), m, budget, min_freq, reg=1.0)
        card = np.array([len(c) for c in combos])
        assert x.sum() == pytest.approx(1.0, abs=1e-6)
        assert (x >= min_freq - 1e-7).all() and (x <= 1 + 1e-7).all()
        assert card @ x <= budget * m + 1e-6
    plan = step_plan(x, 37)
    assert len(plan) == 37 and plan == sorted(plan)  # combinations in order: larger first
    assert sum(step_counts(x, 37)) == 37


def test_allocation_follows_importance_and_rejects_infeasible_budget():
    imp = np.array([0.9, 0.1])
    x = allocate_frequencies(combination_weights(1.0, imp, np.zeros(2)), 2, 0.75, 0.05, reg=1.0)
    # combinations: (0, 1), (0,), (1,) -> the important modality alone gets more steps than the other
    assert x[1] > x[2]
    with pytest.raises(ConfigError, match="budget"):
        allocate_frequencies(combination_weights(0.5, imp, np.zeros(2)), 2, 0.3, 0.2, reg=1.0)


def test_ddpg_state_round_trips_through_safetensors_and_json():
    cfg = DDPGConfig(hidden=16, batch_size=4, updates_per_step=3)
    agent = DDPGAgent(state_dim=4, cfg=cfg, seed=7)
    gen = torch.Generator().manual_seed(0)
    for i in range(6):
        s = torch.rand(4, generator=gen).tolist()
        agent.store(s, agent.act(s, gen), float(i), torch.rand(4, generator=gen).tolist())
        agent.learn(gen)
    tensors, meta = agent.to_tensors("ddpg/")
    restored = DDPGAgent.from_tensors(tensors_from_bytes(tensors_to_bytes(tensors)), json_from_bytes(json_to_bytes(meta)), "ddpg/")
    probe = [0.1, 0.5, 0.2, 0.9]
    assert restored.act(probe) == agent.act(probe)
    # both continue identically: same transitions, same generator state -> same weights and actions
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for a, g in ((agent, g1), (restored, g2)):
        a.store(probe, 0.4, 1.0, probe)
        a.learn(g)
    assert restored.act(probe) == agent.act(probe)
    t1, _ = agent.to_tensors()
    t2, _ = restored.to_tensors()
    assert t1.keys() == t2.keys()
    for k in t1:
        assert torch.equal(t1[k], t2[k]), k
    assert any(k.startswith("actor_opt/") for k in t1), "optimiser moments are part of the state"
