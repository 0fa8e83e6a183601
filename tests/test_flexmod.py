"""FlexMod end to end in the local engine: scheduling state, encoder savings, identical resume."""

from __future__ import annotations

import torch

from mmfl.io.layout import load_round
from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def _cfg(root, rounds=2):
    return parse_experiment(tiny_config_dict(root, method={"name": "flexmod", "params": {"ddpg_batch_size": 2}},
                                         train={"rounds": rounds}))


def test_flexmod_two_rounds_schedules_and_saves_encoder_updates(tmp_path):
    cfg = _cfg(tmp_path)
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 2 and set(result.final) == {"full", "only:a", "only:b"}
    state, _ = load_round(LocalStore(cfg.storage.root), result.experiment_id, 2)
    fm = state.meta["flexmod"]
    assert [h["round"] for h in fm["history"]] == [1, 2]
    assert fm["history"][0]["reward"] is None and fm["history"][1]["reward"] is not None
    assert fm["agent"]["size"] == 1 and fm["agent"]["updates"] == cfg.method.params["ddpg_updates"]
    alloc = state.tensors["flexmod/alloc"]
    assert alloc.shape == (3,) and abs(float(alloc.sum()) - 1) < 1e-6
    for h in fm["history"]:
        assert 0.0 <= h["beta"] <= 1.0
        # at most budget * M encoder updates per step (plus integer rounding of step counts)
        assert h["encoder_updates"] < 2 * h["local_steps"]
        assert h["encoder_updates"] <= cfg.method.params["budget"] * 2 * h["local_steps"] + 2 * len(h["allocation"])


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
    import pytest

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
