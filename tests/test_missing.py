"""Missing-modality masks have the requested statistics; test patterns are what they say."""

import numpy as np
import pytest
import torch

from mmfl.config import MissingConfig
from mmfl.data.missing import client_missing_rates, eval_patterns, pattern_presence, sample_presence, simulate_missing
from mmfl.errors import ConfigError

NAMES = ("img", "txt")


def test_full_pattern_keeps_everything():
    p = sample_presence(50, NAMES, MissingConfig(pattern="full"), 0.9, np.random.default_rng(0))
    assert p.all()


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_mixed_pattern_drops_exactly_one_modality_from_the_requested_fraction(rate):
    n = 201
    p = sample_presence(n, NAMES, MissingConfig(pattern="mixed", rate=rate), rate, np.random.default_rng(1))
    missing_rows = ~p.all(axis=1)
    assert missing_rows.sum() == round(rate * n)
    assert p.any(axis=1).all()  # never both missing
    dropped = (~p).sum(axis=0)
    assert abs(int(dropped[0]) - int(dropped[1])) <= 1  # balanced between modalities


def test_missing_one_modality_pattern():
    p = sample_presence(100, NAMES, MissingConfig(pattern="missing:txt", rate=0.4), 0.4, np.random.default_rng(2))
    assert p[:, 0].all()
    assert (~p[:, 1]).sum() == 40
    with pytest.raises(ConfigError, match="'audio' not in"):
        sample_presence(10, NAMES, MissingConfig(pattern="missing:audio"), 0.4, np.random.default_rng(2))


def test_independent_pattern_matches_per_modality_rates_and_keeps_one_modality():
    cfg = MissingConfig(pattern="independent", rates={"img": 0.2, "txt": 0.5})
    p = sample_presence(20000, NAMES, cfg, 0.0, np.random.default_rng(3))
    assert p.any(axis=1).all()
    miss = 1 - p.mean(axis=0)
    # both missing (prob 0.1) is resolved by restoring one uniformly: expected 0.2-0.05, 0.5-0.05
    assert abs(miss[0] - 0.15) < 0.015 and abs(miss[1] - 0.45) < 0.015


def test_per_client_rates_spread_and_explicit():
    cfg = MissingConfig(pattern="mixed", rate=0.5, client_rate_spread=0.3)
    rates = client_missing_rates(cfg, 200, seed=0)
    assert min(rates) >= 0.2 and max(rates) <= 0.8
    assert abs(np.mean(rates) - 0.5) < 0.03 and np.std(rates) > 0.1
    explicit = MissingConfig(pattern="mixed", client_rates=[0.0, 1.0, 0.5])
    masks = simulate_missing([10, 10, 10], NAMES, explicit, seed=0)
    realised = [float((~m.all(dim=1)).float().mean()) for m in masks]
    assert realised == [0.0, 1.0, 0.5]


def test_masks_are_deterministic_in_the_seed():
    cfg = MissingConfig(pattern="mixed", rate=0.5)
    a = simulate_missing([30, 40], NAMES, cfg, seed=5)
    b = simulate_missing([30, 40], NAMES, cfg, seed=5)
    c = simulate_missing([30, 40], NAMES, cfg, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_eval_patterns_and_presence():
    assert eval_patterns(NAMES) == ["full", "only:img", "only:txt"]
    assert pattern_presence("only:txt", NAMES, 3).tolist() == [[False, True]] * 3
    assert pattern_presence("full", NAMES, 2).all()
    with pytest.raises(ConfigError, match="only:audio"):
        eval_patterns(NAMES, ["only:audio"])


def test_with_present_zeroes_absent_inputs(tiny_cfg):
    from mmfl.data import build_federated_data

    data = build_federated_data(tiny_cfg)
    for shard in data.clients:
        for j, name in enumerate(shard.names):
            absent = ~shard.present[:, j]
            assert torch.all(shard.inputs[name][absent] == 0)
    assert data.test.present.all()
