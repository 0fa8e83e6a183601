"""Unit tests of every round step, on explicit state."""

import pytest
import torch

from mmfl.aggregation import weighted_mean
from mmfl.engine import steps
from mmfl.state import ClientUpdate, RoundState
from mmfl.io.codec import state_from_bytes, state_to_bytes, update_from_bytes, update_to_bytes
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


@pytest.fixture
def setup(tiny_cfg):
    data = steps.prepare_data(tiny_cfg)
    state = steps.init_state(tiny_cfg, data.spec)
    return tiny_cfg, data, state, dict(enumerate(data.clients))


def test_prepare_data_is_deterministic(tiny_cfg):
    a, b = steps.prepare_data(tiny_cfg), steps.prepare_data(tiny_cfg)
    assert len(a.clients) == 4
    for x, y in zip(a.clients, b.clients):
        assert torch.equal(x.labels, y.labels) and torch.equal(x.present, y.present)


def test_init_state_holds_model_and_data_spec(setup):
    cfg, data, state, _ = setup
    assert state.round == 0
    assert all(k.startswith("model/") for k in state.tensors)
    assert steps.spec_of(state) == data.spec
    again = steps.init_state(cfg, data.spec)
    assert all(torch.equal(state.tensors[k], again.tensors[k]) for k in state.tensors)


def test_sample_clients_is_seeded_and_respects_fraction(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, partition={"num_clients": 20}, train={"clients_per_round": 0.25}))
    picks = [steps.sample_clients(cfg, r) for r in range(1, 6)]
    assert all(len(p) == 5 and len(set(p)) == 5 and p == sorted(p) for p in picks)
    assert picks == [steps.sample_clients(cfg, r) for r in range(1, 6)]
    assert len({tuple(p) for p in picks}) > 1
    full = parse_experiment(tiny_config_dict(tmp_path))
    assert steps.sample_clients(full, 1) == [0, 1, 2, 3]


def test_client_train_returns_trained_updates_deterministically(setup):
    cfg, _, state, shards = setup
    ups = steps.client_train(cfg, state, shards, [0, 2])
    assert [u.client_id for u in ups] == [0, 2]
    assert [u.num_samples for u in ups] == [len(shards[0]), len(shards[2])]
    assert set(ups[0].tensors) == set(state.tensors)
    assert any(not torch.equal(ups[0].tensors[k], state.tensors[k]) for k in state.tensors)
    assert ups[0].metrics["local_steps"] == -(-len(shards[0]) // cfg.train.batch_size) * cfg.train.local_epochs
    again = steps.client_train(cfg, state, shards, [0, 2])
    assert all(torch.equal(ups[1].tensors[k], again[1].tensors[k]) for k in state.tensors)


def test_upload_prototypes_is_a_no_op_for_baselines(setup):
    cfg, _, state, shards = setup
    ups = steps.client_train(cfg, state, shards, [1])
    out = steps.upload_prototypes(cfg, state, shards, ups)
    assert out[0].tensors.keys() == ups[0].tensors.keys()


def test_aggregate_is_the_sample_weighted_mean(setup):
    cfg, _, state, shards = setup
    ups = steps.client_train(cfg, state, shards, [0, 1, 3])
    new = steps.aggregate(cfg, state, ups)
    assert new.round == 1
    expected = weighted_mean([u.model_weights() for u in ups], [u.num_samples for u in ups])
    for k, v in expected.items():
        assert torch.allclose(new.tensors[f"model/{k}"], v, atol=1e-7)
    key = next(iter(expected))
    manual = sum(u.num_samples * u.model_weights()[key].double() for u in ups) / sum(u.num_samples for u in ups)
    assert torch.allclose(new.tensors[f"model/{key}"].double(), manual, atol=1e-6)
    assert new.meta["history"][-1]["clients"] == [0, 1, 3]
    with pytest.raises(ValueError, match="no client updates"):
        steps.aggregate(cfg, state, [])


def test_schedule_is_identity_for_baselines(setup):
    cfg, _, state, _ = setup
    assert steps.schedule(cfg, state) is state


def test_evaluate_reports_every_test_pattern_and_learns(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"local_epochs": 3}))
    data = steps.prepare_data(cfg)
    state, shards = steps.init_state(cfg, data.spec), dict(enumerate(data.clients))
    before = steps.evaluate(cfg, state, data.test)
    assert set(before) == {"full", "only:a", "only:b"}
    for _ in range(8):
        state = steps.aggregate(cfg, state, steps.client_train(cfg, state, shards, [0, 1, 2, 3]))
    after = steps.evaluate(cfg, state, data.test)
    for p in after:
        assert 0.0 <= after[p]["acc"] <= 1.0 and 0.0 <= after[p]["f1"] <= 1.0
    assert after["full"]["acc"] > 0.8 > before["full"]["acc"]


def test_should_evaluate_every_k_and_last(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 7}, eval={"every": 3}))
    assert [r for r in range(1, 8) if steps.should_evaluate(cfg, r)] == [3, 6, 7]


def test_fedprox_keeps_local_models_closer_to_the_global_model(tmp_path):
    dist = {}
    for name, params in (("fedavg", {}), ("fedprox", {"mu": 5.0})):
        cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": name, "params": params}, train={"local_epochs": 3}))
        data = steps.prepare_data(cfg)
        state = steps.init_state(cfg, data.spec)
        up = steps.client_train(cfg, state, dict(enumerate(data.clients)), [0])[0]
        dist[name] = sum(float(((up.tensors[k] - state.tensors[k]) ** 2).sum()) for k in state.tensors) ** 0.5
    assert dist["fedprox"] < 0.8 * dist["fedavg"]


def test_zero_fill_and_fedavg_differ_only_in_the_missing_path(tmp_path):
    cfgs = [parse_experiment(tiny_config_dict(tmp_path, method={"name": m})) for m in ("fedavg", "zerofill")]
    data = steps.prepare_data(cfgs[0])
    ups = [steps.client_train(c, steps.init_state(c, data.spec), dict(enumerate(data.clients)), [0])[0] for c in cfgs]
    assert not torch.equal(ups[0].tensors["model/head.weight"], ups[1].tensors["model/head.weight"])
    assert torch.equal(ups[1].tensors["model/placeholders"], torch.zeros_like(ups[1].tensors["model/placeholders"]))


def test_state_and_update_round_trip_through_bytes(setup):
    cfg, _, state, shards = setup
    state = RoundState(2, state.tensors, {"x": [1, 2], "data_spec": state.meta["data_spec"]})
    back = state_from_bytes(*state_to_bytes(state))
    assert back.round == 2 and back.meta == state.meta
    assert all(torch.equal(back.tensors[k], v) for k, v in state.tensors.items())
    up = ClientUpdate(3, 17, {"model/w": torch.arange(4.0)}, {"train_loss": 0.5}, {"note": "ok"})
    back_up = update_from_bytes(*update_to_bytes(up))
    assert back_up.client_id == 3 and back_up.num_samples == 17 and back_up.metrics == {"train_loss": 0.5}
    assert torch.equal(back_up.tensors["model/w"], up.tensors["model/w"])
