"""FlexMod's cost model: allocation under unequal encoder costs (solved by hand) and measured encoder FLOPs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmfl.data.dataset import ModalitySpec
from mmfl.errors import ConfigError
from mmfl.scheduling.allocation import allocate_frequencies, combination_costs, modality_combinations
from mmfl.scheduling.costs import EncoderCost, measure_encoder, step_encoder_flops


def test_allocation_with_unequal_encoder_costs_matches_the_hand_solved_program():
    """Two encoders, a costs 3 and b costs 1: combinations (a+b, a, b) cost (4, 3, 1), cap = 0.5 * 4 = 2.

    With equal weights w = 1, reg = 1, min_frequency = 0 the KKT conditions of
    max w.x - x.x/2 s.t. sum x = 1, cost.x <= 2 give x_S = 1 - lambda - mu * cost(S) with
    3 - 3 lambda - 8 mu = 1 and 8 - 8 lambda - 26 mu = 2, so mu = 1/7, lambda = 2/7 and
    x = (5 - cost) / 7 = (1/7, 2/7, 4/7): the cheap encoder b trains alone most often.
    """
    x = allocate_frequencies([1.0, 1.0, 1.0], 2, budget=0.5, min_freq=0.0, reg=1.0, encoder_costs=[3.0, 1.0])
    np.testing.assert_allclose(x, [1 / 7, 2 / 7, 4 / 7], atol=1e-6)
    assert combination_costs(2, [3.0, 1.0]) @ x <= 2 + 1e-9
    # counting encoders instead (cost |S| = (2, 1, 1), cap 1) cannot tell a from b: the full combination
    # gets nothing and a and b share the rest equally
    np.testing.assert_allclose(allocate_frequencies([1.0, 1.0, 1.0], 2, 0.5, 0.0, 1.0), [0, 0.5, 0.5], atol=1e-6)


def test_costs_scale_free_and_cardinality_when_equal():
    np.testing.assert_allclose(combination_costs(3, None), [len(c) for c in modality_combinations(3)])
    w = [0.9, 0.2, 0.4, 0.1, 0.3, 0.6, 0.5]
    a = allocate_frequencies(w, 3, 0.6, 0.05, 1.0, encoder_costs=[2.0, 2.0, 2.0])
    np.testing.assert_allclose(a, allocate_frequencies(w, 3, 0.6, 0.05, 1.0), atol=1e-6)
    np.testing.assert_allclose(allocate_frequencies(w, 3, 0.6, 0.05, 1.0, encoder_costs=[5.0, 1.0, 2.0]),
                               allocate_frequencies(w, 3, 0.6, 0.05, 1.0, encoder_costs=[50.0, 10.0, 20.0]), atol=1e-6)
    with pytest.raises(ConfigError, match="method.params.budget = 0.3"):
        allocate_frequencies([1.0, 1.0, 1.0], 2, 0.3, 0.2, 1.0, encoder_costs=[3.0, 1.0])


def test_measured_encoder_flops_of_a_linear_layer_by_hand():
    """Linear 10 -> 4 without bias: forward 2*10*4 = 80 FLOPs per sample; backward computes only the weight
    gradient (the input needs none): another 80."""
    cost = measure_encoder(nn.Linear(10, 4, bias=False), ModalitySpec("v", (10,)), batch=8)
    assert cost == EncoderCost(80.0, 80.0)
    two = measure_encoder(nn.Sequential(nn.Linear(10, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False)),
                          ModalitySpec("v", (10,)), batch=8)
    # second layer: forward 24, backward weight grad 24 + input grad 24
    assert two == EncoderCost(80.0 + 24.0, 80.0 + 48.0)
    costs = [EncoderCost(100.0, 200.0), EncoderCost(10.0, 20.0)]
    assert step_encoder_flops(costs, [1], batch=4) == 4 * (100 + 10 + 20)
    assert step_encoder_flops(costs, [0, 1], batch=4) == 4 * 330
    torch.testing.assert_close(torch.tensor(EncoderCost.from_json(costs[0].to_json()).train), torch.tensor(300.0))


def test_reward_is_the_global_models_validation_gain_one_round_late():
    """beta_1 (chosen after round 1) is trained in round 2; the model after round 2 is measured in round 3."""
    from mmfl.scheduling.reward import initial_memory, remember, reward_transition

    mem = initial_memory(0.5)
    g = {1: 0.10, 2: 0.30, 3: 0.45, 4: 0.50}  # global-model validation accuracy measured in round r
    assert reward_transition(mem, g[1], 100) is None  # nothing to reward yet
    mem = remember(mem, g[1], [1.0], 0.7)  # schedule of round 1: beta_1 = 0.7 on observation [1.0]
    assert reward_transition(mem, g[2], 100) is None  # g_2 - g_1 is the effect of the initial beta (no observation)
    mem = remember(mem, g[2], [2.0], 0.2)
    t = reward_transition(mem, g[3], 100)
    assert t is not None and t[0] == [1.0] and t[1] == 0.7 and t[3] == [2.0]
    assert t[2] == pytest.approx(100 * (0.45 - 0.30))
    mem = remember(mem, g[3], [3.0], 0.9)
    t = reward_transition(mem, g[4], 100)
    assert t[:2] == ([2.0], 0.2) and t[2] == pytest.approx(5.0) and t[3] == [3.0]
    assert len(mem["actions"]) == 2
