"""The local engine: a full run, and resuming after a stop or a kill gives identical results."""

from pathlib import Path

import pytest
import torch

from mmfl.io.layout import completed_rounds, load_round
from mmfl.local import run_experiment
from mmfl.errors import ConfigError
from mmfl.io.store import LocalStore
from mmfl.methods import load_experiment, parse_experiment
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


def _final(store_root: Path, cfg):
    store = LocalStore(store_root)
    last = completed_rounds(store, cfg.experiment_id())[-1]
    return load_round(store, cfg.experiment_id(), last)


def test_run_checkpoints_every_round_and_reports_the_matrix(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, eval={"every": 2}))
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 3 and result.resumed_from == 0
    assert completed_rounds(LocalStore(tmp_path / "store"), cfg.experiment_id()) == [0, 1, 2, 3]
    assert set(result.final) == {"full", "only:a", "only:b"}
    evaluated = [h["round"] for h in result.history if h["eval"]]
    assert evaluated == [2, 3]


def test_stopped_run_resumes_with_identical_final_state_and_metrics(tmp_path):
    cfg_a = parse_experiment(tiny_config_dict(tmp_path / "a", train={"rounds": 4}))
    cfg_b = parse_experiment(tiny_config_dict(tmp_path / "b", train={"rounds": 4}))
    full = run_experiment(cfg_a, progress=False)
    partial = run_experiment(cfg_b, progress=False, stop_after=2)
    assert partial.rounds_done == 2 and partial.final is None
    resumed = run_experiment(cfg_b, progress=False)
    assert resumed.resumed_from == 2
    assert resumed.final == full.final
    state_a, _ = _final(tmp_path / "a" / "store", cfg_a)
    state_b, _ = _final(tmp_path / "b" / "store", cfg_b)
    assert state_a.tensors.keys() == state_b.tensors.keys()
    assert all(torch.equal(state_a.tensors[k], state_b.tensors[k]) for k in state_a.tensors)


def test_quickstart_config_runs_on_real_mfeat_data(tmp_path):
    from mmfl.data import build_federated_data

    cfg = load_experiment(ROOT / "configs" / "quickstart.yaml",
                          ["train.rounds=2", "tracking.enabled=false", f"storage.root={tmp_path / 'store'}"])
    data = build_federated_data(cfg)
    # the PmcmFL protocol: each modality missing with p = 0.5, samples missing both dropped
    kept = sum(len(c) for c in data.clients)
    assert 0.7 * 1600 < kept < 0.8 * 1600
    present = torch.cat([c.present for c in data.clients])
    assert present.any(dim=1).all() and 0.28 < present.all(dim=1).float().mean().item() < 0.39
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 2
    assert set(result.final) == {"full", "~train", "only:fou", "only:kar"}
    assert all(0.0 <= v["acc"] <= 1.0 for v in result.final.values())


def test_train_threads_sets_torch_threads_for_the_run(tmp_path):
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 1, "threads": other}))
    try:
        run_experiment(cfg, progress=False)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="train.threads"):
        parse_experiment(tiny_config_dict(tmp_path, train={"threads": 0}))
