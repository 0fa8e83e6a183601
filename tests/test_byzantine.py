"""Byzantine clients: attack drills, screening against the round's other updates, capped sample counts,
and the configured aggregation rule in every weight-averaging method."""

from __future__ import annotations

import pytest
import torch

from mmfl.methods import parse_experiment
from mmfl.engine import faults, robust, steps
from mmfl.state import ClientUpdate
from tests.conftest import tiny_config_dict


def ten_clients(tmp_path, **rel):
    raw = tiny_config_dict(tmp_path, partition={"scheme": "iid", "num_clients": 10, "min_client_size": 8},
                           data={"name": "synthetic", "synthetic": {"num_samples": 400, "num_classes": 4,
                                                                    "dims": {"a": 8, "b": 6}}})
    raw["reliability"] = rel
    return parse_experiment(raw)


@pytest.fixture(scope="module")
def round_one(tmp_path_factory):
    """Round 1 of a ten-client experiment: config, state, shards and the honest updates."""
    cfg = ten_clients(tmp_path_factory.mktemp("byz"))
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    shards = dict(enumerate(data.clients))
    return cfg, state, shards, steps.client_train(cfg, state, shards, steps.sample_clients(cfg, 1))


def with_rel(cfg, **rel):
    raw = cfg.model_dump(mode="json")
    raw["reliability"] = {**raw["reliability"], **rel}
    return parse_experiment(raw)


def attacked(cfg, state, updates, client, **fault):
    drill = with_rel(cfg, fault_injection=[{"client": client, **fault}])
    return [faults.after_training(drill, 1, u, state.model_weights()) for u in updates]


# ---- attack drills ---------------------------------------------------------------------------------------
def test_attack_modes_change_the_update_as_documented(round_one):
    cfg, state, _, updates = round_one
    g = state.model_weights()
    honest = updates[3].model_weights()
    flipped = attacked(cfg, state, updates, 3, mode="scale", scale=-1.0)[3].model_weights()
    boosted = attacked(cfg, state, updates, 3, mode="boost")[3].model_weights()
    noisy = attacked(cfg, state, updates, 3, mode="noise", scale=0.5)[3].model_weights()
    liar = attacked(cfg, state, updates, 3, mode="samples")[3]
    for name, ref in g.items():
        if not ref.is_floating_point():
            continue
        assert torch.equal(flipped[name], -honest[name])
        assert torch.allclose(boosted[name], ref + 10 * (honest[name] - ref), atol=1e-5)  # default scale: 10
        spread = float((noisy[name] - ref).std()) if ref.numel() > 100 else None
        assert spread is None or 0.4 < spread < 0.6
    assert liar.num_samples == 10**9 and updates[3].num_samples < 100
    again = attacked(cfg, state, updates, 3, mode="noise", scale=0.5)[3].model_weights()
    assert all(torch.equal(again[k], noisy[k]) for k in noisy)  # seeded by (seed, round, client)


def test_label_flip_and_every_round_faults(round_one):
    cfg, state, shards, _ = round_one
    drill = with_rel(cfg, fault_injection=[{"client": 2, "mode": "labels"}])  # round: null = every round
    for r in (1, 7):
        poisoned = faults.poison_shards(drill, r, shards, [1, 2])
        assert torch.equal(poisoned[2].labels, 3 - shards[2].labels) and poisoned[1] is shards[1]
    assert faults.poison_shards(drill, 1, shards, [1]) is shards


# ---- screening ---------------------------------------------------------------------------------------------
def test_honest_updates_pass_the_default_screen(round_one):
    cfg, state, _, updates = round_one
    assert cfg.reliability.max_norm_ratio == 3.0 and cfg.reliability.aggregation.rule == "mean"
    accepted, rejected = robust.validate_updates(updates, state, cfg)
    assert rejected == [] and len(accepted) == 10


@pytest.mark.parametrize("fault", [{"mode": "scale", "scale": -1.0}, {"mode": "boost", "scale": 10.0},
                                   {"mode": "boost", "scale": -10.0}, {"mode": "noise", "scale": 0.5}])
def test_sign_flipped_boosted_and_noisy_updates_are_rejected_by_the_default_screen(round_one, fault):
    cfg, state, _, updates = round_one
    bad = attacked(cfg, state, updates, 4, **fault)
    accepted, rejected = robust.validate_updates(bad, state, cfg)
    assert [r["client"] for r in rejected] == [4] and "max_norm_ratio = 3" in rejected[0]["reason"]
    assert [u.client_id for u in accepted] == [c for c in range(10) if c != 4]


def test_cosine_screen_catches_a_flipped_delta_of_honest_size(round_one):
    cfg, state, _, updates = round_one
    bad = attacked(cfg, state, updates, 4, mode="boost", scale=-1.0)
    assert robust.validate_updates(bad, state, cfg)[1] == []  # same norm as an honest update: passes the ratio
    strict = with_rel(cfg, min_cosine=0.0)
    accepted, rejected = robust.validate_updates(bad, state, strict)
    assert [r["client"] for r in rejected] == [4] and "min_cosine = 0" in rejected[0]["reason"]
    assert robust.validate_updates(updates, state, strict)[1] == []  # IID data: honest updates agree


def test_claimed_sample_counts_are_capped_by_the_known_shard(round_one):
    cfg, state, shards, updates = round_one
    sizes = {c: len(s) for c, s in shards.items()}
    liar = attacked(cfg, state, updates, 5, mode="samples")
    new = steps.aggregate(cfg, state, liar, expected_clients=list(range(10)), shard_sizes=sizes)
    clean = steps.aggregate(cfg, state, updates, expected_clients=list(range(10)), shard_sizes=sizes)
    assert all(torch.equal(new.tensors[k], clean.tensors[k]) for k in clean.tensors)
    entry = new.meta["history"][-1]
    assert entry["capped"] == [{"client": 5, "claimed": 10**9, "known": sizes[5]}]
    assert robust.clients_summary(new)["capped"] == entry["capped"]
    trusting = steps.aggregate(cfg, state, liar, expected_clients=list(range(10)))  # no sizes: nothing to cap
    w5 = liar[5].model_weights()
    for name, value in trusting.model_weights().items():
        if value.is_floating_point():
            assert torch.allclose(value, w5[name], atol=1e-5)  # the liar dictates the mean


# ---- the aggregation rule in the round ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["fedavg", "zerofill", "fedprox", "pmcmfl"])
@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "multi_krum", "clip"])
def test_every_weight_averaging_method_uses_the_configured_rule(round_one, method, rule):
    cfg, state, shards, _ = round_one
    raw = cfg.model_dump(mode="json")
    raw["method"] = {"name": method, "params": {}}
    base = parse_experiment(raw)
    st = steps.init_state(base, steps.spec_of(state))
    honest = steps.upload_prototypes(base, st, shards, steps.client_train(base, st, shards, [0, 1, 2, 3, 4]))
    # one delta-flipped update, boosted 2x: under the ratio limit, so only the rule can contain it
    bad = [faults.after_training(with_rel(base, fault_injection=[{"client": 0, "mode": "boost", "scale": -2.0}]),
                                 1, u, st.model_weights()) for u in honest]
    mean = steps.aggregate(base, st, bad).model_weights()
    robust_state = steps.aggregate(with_rel(base, aggregation={"rule": rule}), st, bad).model_weights()
    clean = steps.aggregate(base, st, honest[1:]).model_weights()

    def dist(a):
        return sum(float(((a[k].double() - clean[k].double()) ** 2).sum()) for k in clean if clean[k].is_floating_point())

    assert dist(robust_state) < dist(mean)
