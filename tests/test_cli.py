"""The command line: run several methods, report from MLflow, clear errors on bad input."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


def _mmfl(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "mmfl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_run_methods_then_report_reads_the_sqlite_store(tmp_path):
    cfg = tiny_config_dict(tmp_path, tracking={"enabled": True, "experiment": "cli-test"}, train={"rounds": 2},
                           eval={"every": 1, "patterns": ["full", "~train", "mixed@0.5", "only:a"]})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    run = _mmfl(["run", "exp.yaml", "--method", "fedavg", "--method", "zerofill", "--no-progress"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Test matrix" in run.stdout and "zerofill" in run.stdout and "only:a" in run.stdout
    assert "~train" in run.stdout and "mixed@0.5" in run.stdout
    assert (tmp_path / "mlruns.db").is_file()  # default tracking: sqlite file in the working dir

    report = _mmfl(["report", "--experiment", "cli-test"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "fedavg" in report.stdout and "zerofill" in report.stdout and "mixed@0.50" in report.stdout
    # the drawn test patterns come back from MLflow under their own names (stored as acc/train_dist, acc/mixed_0.5)
    header = next(line for line in report.stdout.splitlines() if "method" in line)
    assert [c for c in ("full", "~train", "mixed@0.5", "only:a") if c in header] == ["full", "~train", "mixed@0.5", "only:a"]


def test_bad_config_gives_one_clear_error_and_exit_code_2(tmp_path):
    cfg = tiny_config_dict(tmp_path, partition={"num_clients": 4, "alpha": -3})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = _mmfl(["run", "bad.yaml"], tmp_path)
    assert out.returncode == 2
    assert "partition.alpha = -3" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_scores_a_stored_checkpoint_and_names_missing_ones(tmp_path):
    cfg = tiny_config_dict(tmp_path, train={"rounds": 2})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    missing = _mmfl(["eval", "exp.yaml"], tmp_path)
    assert missing.returncode == 2 and "no checkpoint of experiment tiny-fedavg-" in missing.stderr
    assert _mmfl(["run", "exp.yaml", "--no-progress"], tmp_path).returncode == 0
    out = _mmfl(["eval", "exp.yaml", "--round", "1"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "only:b" in out.stdout and "│ 1 " in out.stdout


def test_method_keeps_its_file_params_and_set_comes_after(tmp_path):
    from mmfl.cli import _configs, build_parser

    cfg = tiny_config_dict(tmp_path, method={"name": "fedprox", "params": {"mu": 0.5}})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    args = build_parser().parse_args(["run", str(tmp_path / "exp.yaml"), "--method", "fedprox", "--method", "fedavg",
                                      "--set", "seed=9", "--seed", "3"])
    plain = list(_configs(args))
    assert [(c.method.name, c.method.params, c.seed) for c in plain] == [("fedprox", {"mu": 0.5}, 3), ("fedavg", {}, 3)]
    args = build_parser().parse_args(["run", str(tmp_path / "exp.yaml"), "--method", "fedprox",
                                      "--set", "method.params.mu=0.1"])
    (tuned,) = _configs(args)
    assert tuned.method.params == {"mu": 0.1}
    assert tuned.experiment_id() != plain[0].experiment_id()
