"""FlexMod end to end in the local engine: scheduling state, encoder savings, identical resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfl.engine import steps
from mmfl.io.layout import load_round
from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def _cfg(root, rounds=2):
    return parse_experiment(tiny_config_dict(root, method={"name": "flexmod", "params": {"ddpg_batch_size": 2}},
                                         train={"rounds": rounds}))


def test_flexmod_three_rounds_schedules_and_saves_encoder_flops(tmp_path):
    cfg = _cfg(tmp_path, rounds=3)
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 3 and set(result.final) == {"full", "only:a", "only:b"}
    state, _ = load_round(LocalStore(cfg.storage.root), result.experiment_id, 3)
    fm = state.meta["flexmod"]
    assert [h["round"] for h in fm["history"]] == [1, 2, 3]
    # the global model trained with beta_1 (round 2) is measured in round 3: the first reward
    assert [h["reward"] is None for h in fm["history"]] == [True, True, False]
    h1, h2, h3 = fm["history"]
    assert h3["reward"] == pytest.approx(100 * (h3["global_val_acc"] - h2["global_val_acc"]))
    assert fm["agent"]["size"] == 1 and fm["agent"]["updates"] == cfg.method.params["ddpg_updates"]
    alloc = state.tensors["flexmod/alloc"]
    assert alloc.shape == (3,) and abs(float(alloc.sum()) - 1) < 1e-6
    costs = fm["encoder_costs"]
    assert set(costs) == {"a", "b"} and all(c["forward"] > 0 and c["backward"] > 0 for c in costs.values())
    data = steps.prepare_data(cfg)
    train_samples = sum(len(c) for c in data.clients) * (1 - cfg.method.params["val_fraction"])
    entire = train_samples * cfg.train.local_epochs * sum(c["forward"] + c["backward"] for c in costs.values())
    for h in fm["history"]:
        assert 0.0 <= h["beta"] <= 1.0
        assert h["encoder_updates"] < 2 * h["local_steps"]
        assert 0 < h["encoder_flops"] < 0.95 * entire  # FedAvg (Entire Update) would spend ~ entire


def test_partial_update_spends_the_same_budget_with_a_fixed_allocation(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "partial_update"}, train={"rounds": 2}))
    result = run_experiment(cfg, progress=False)
    state, _ = load_round(LocalStore(cfg.storage.root), result.experiment_id, 2)
    pu = state.meta["partial_update"]
    # two encoders of (nearly) equal cost: equal weights give the symmetric solution
    assert pu["allocation"][1] == pytest.approx(pu["allocation"][2], abs=0.05)
    back = [pu["encoder_costs"][n]["backward"] for n in ("a", "b")]
    cost = np.array([sum(back), back[0], back[1]]) / sum(back)
    assert cost @ np.array(pu["allocation"]) <= cfg.method.params["budget"] + 1e-6
    assert result.history[-1]["encoder_flops"] > 0 and result.history[-1]["train_time_s"] > 0


def test_flexmod_resume_equals_uninterrupted_run(tmp_path):
    full = _cfg(tmp_path / "a", rounds=3)
    uninterrupted = run_experiment(full, progress=False)
    split = _cfg(tmp_path / "b", rounds=3)
    first = run_experiment(split, progress=False, stop_after=1)
    assert first.rounds_done == 1
    resumed = run_experiment(split, progress=False)
    assert resumed.resumed_from == 1 and resumed.rounds_done == 3
    assert resumed.final == uninterrupted.final
    a, _ = load_round(LocalStore(full.storage.root), uninterrupted.experiment_id, 3)
    b, _ = load_round(LocalStore(split.storage.root), resumed.experiment_id, 3)
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert a.meta["flexmod"] == b.meta["flexmod"]


def test_bad_method_params_name_field_and_value(tmp_path):
    from mmfl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method\.params\.budget.*1\.5"):
        parse_experiment(tiny_config_dict(tmp_path, method={"name": "flexmod", "params": {"budget": 1.5}}))
    with pytest.raises(ConfigError, match=r"method\.params\.inference"):
        parse_experiment(tiny_config_dict(tmp_path, method={"name": "pmcmfl", "params": {"inference": "l3"}}))
    with pytest.raises(ConfigError, match=r"method\.params\.inner_lr_typo"):
        parse_experiment(tiny_config_dict(tmp_path, method={"name": "threefm", "params": {"inner_lr_typo": 0.1}}))
    # a budget no allocation can meet is reported when the experiment starts, naming the field
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "flexmod", "params": {"budget": 0.3}}))
    with pytest.raises(ConfigError, match=r"budget = 0\.3"):
        run_experiment(cfg, progress=False)


def test_local_reward_option_keeps_the_earlier_signal(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "flexmod", "params": {"ddpg_batch_size": 2,
                       "reward": "local", "cost": "count"}}, train={"rounds": 2}))
    result = run_experiment(cfg, progress=False)
    state, _ = load_round(LocalStore(cfg.storage.root), result.experiment_id, 2)
    h1, h2 = state.meta["flexmod"]["history"]
    assert h1["reward"] is None and h2["reward"] == pytest.approx(100 * (h2["val_acc"] - h1["val_acc"]))
