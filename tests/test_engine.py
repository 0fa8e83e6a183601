"""The local engine: a full run, and resuming after a stop or a kill gives identical results."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from mmfl.config import parse_config
from mmfl.engine.checkpoint import completed_rounds, load_round
from mmfl.engine.local import run_experiment
from mmfl.io.store import LocalStore
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


def _final(store_root: Path, cfg):
    store = LocalStore(store_root)
    last = completed_rounds(store, cfg.experiment_id())[-1]
    return load_round(store, cfg.experiment_id(), last)


def test_run_checkpoints_every_round_and_reports_the_matrix(tmp_path):
    cfg = parse_config(tiny_config_dict(tmp_path, eval={"every": 2}))
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 3 and result.resumed_from == 0
    assert completed_rounds(LocalStore(tmp_path / "store"), cfg.experiment_id()) == [0, 1, 2, 3]
    assert set(result.final) == {"full", "only:a", "only:b"}
    evaluated = [h["round"] for h in result.history if h["eval"]]
    assert evaluated == [2, 3]


def test_stopped_run_resumes_with_identical_final_state_and_metrics(tmp_path):
    cfg_a = parse_config(tiny_config_dict(tmp_path / "a", train={"rounds": 4}))
    cfg_b = parse_config(tiny_config_dict(tmp_path / "b", train={"rounds": 4}))
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


def test_killed_cli_run_resumes_from_its_last_round(tmp_path):
    rounds = 6
    cfg_dict = tiny_config_dict(tmp_path, train={"rounds": rounds, "local_epochs": 2})
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_dict))
    cfg = parse_config(cfg_dict)
    store = LocalStore(tmp_path / "store")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "mmfl", "run", str(cfg_path), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(completed_rounds(store, cfg.experiment_id())) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    done = completed_rounds(store, cfg.experiment_id())
    assert 2 <= done[-1] < rounds, f"kill landed outside the run: completed {done}"

    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"resumed from round {done[-1]}" in out.stdout
    killed_state, killed_metrics = _final(tmp_path / "store", cfg)

    clean_cfg = parse_config(tiny_config_dict(tmp_path / "clean", train={"rounds": rounds, "local_epochs": 2}))
    clean = run_experiment(clean_cfg, progress=False)
    clean_state, _ = _final(tmp_path / "clean" / "store", clean_cfg)
    assert killed_metrics["eval"] == clean.final
    assert all(torch.equal(killed_state.tensors[k], clean_state.tensors[k]) for k in clean_state.tensors)


def test_quickstart_config_runs_on_real_mfeat_data(tmp_path):
    from mmfl.config import load_config

    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["train.rounds=1", "tracking.enabled=false", f"storage.root={tmp_path / 'store'}"])
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 1
    assert set(result.final) == {"full", "only:pix", "only:fou"}
    assert result.final["full"]["acc"] > 0.2  # one round already beats chance (0.1) on 10 digits
