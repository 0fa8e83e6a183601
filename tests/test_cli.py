"""The command line: run several methods, report from MLflow, clear errors on bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
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

    report = _mmfl(["report", "--experiment", "cli-test", "--baseline", "fedavg", "--no-mlflow"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "fedavg" in report.stdout and "zerofill" in report.stdout and "baseline" in report.stdout
    assert "settings that differ between the rows: method.name" in report.stdout
    # the drawn test patterns come back from MLflow under their own names (stored as acc/train_dist, acc/mixed_0.5)
    md = _mmfl(["report", "--experiment", "cli-test", "--format", "markdown", "--no-mlflow"], tmp_path)
    header = next(line for line in md.stdout.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|") if c.strip().startswith("acc ")] == [
        "acc full (%)", "acc ~train (%)", "acc mixed@0.5 (%)", "acc only:a (%)"]


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


def test_partition_limits_fail_before_data_or_tracking(tmp_path):
    cfg = tiny_config_dict(tmp_path, data={"name": "basicmotions"}, partition={"num_clients": 10, "min_client_size": 8},
                           tracking={"enabled": True, "experiment": "never"})
    (tmp_path / "bm.yaml").write_text(yaml.safe_dump(cfg))
    out = _mmfl(["run", "bm.yaml", "--no-progress"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: partition.min_client_size = 8: 10 clients x 8 exceeds 64 (basicmotions has "
                                  "64 training samples); lower partition.num_clients or partition.min_client_size")
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "store").exists()


def test_per_method_params_give_each_method_its_own_settings(tmp_path):
    from mmfl.cli import _configs, build_parser

    cfg = tiny_config_dict(tmp_path, methods={"fedprox": {"mu": 0.3}, "threefm": {"local_epochs": 2}})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    args = build_parser().parse_args(["run", str(tmp_path / "exp.yaml"), "--method", "fedavg", "--method", "fedprox",
                                      "--method", "threefm", "--set", "method.params.inner_steps=2"])
    with pytest.raises(Exception, match="inner_steps"):  # --set applies to every method: fedavg has no inner_steps
        _configs(args)
    args = build_parser().parse_args(["run", str(tmp_path / "exp.yaml"), "--method", "fedavg", "--method", "fedprox",
                                      "--method", "threefm"])
    fedavg, fedprox, threefm = _configs(args)
    assert fedavg.method.params == {} and fedprox.method.params == {"mu": 0.3}
    assert threefm.method.params["local_epochs"] == 2 and threefm.method.params["outer_lr"] == 1e-3
    cfg["methods"] = {"fedproxx": {"mu": 1}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    out = _mmfl(["run", "bad.yaml"], tmp_path)
    assert out.returncode == 2 and "methods.fedproxx: unknown method 'fedproxx'" in out.stderr


def test_method_overrides_are_printed_at_the_start_of_its_run(tmp_path):
    cfg = tiny_config_dict(tmp_path, train={"rounds": 1})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = _mmfl(["run", "exp.yaml", "--method", "fedavg", "--method", "threefm", "--no-progress"], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("experiment tiny-threefm-"))
    assert lines[start + 1].strip() == ("threefm overrides train.batch_size=full, train.optimizer=Adam(lr=0.001): "
                                        "local budget 1 epochs x batch full, Adam(lr=0.001)")
    assert not any("overrides" in line for line in lines[:start])  # fedavg trains with the shared settings


def test_no_progress_silences_third_party_bars(tmp_path):
    """transformers' "Loading weights" bar (tqdm) prints without it and not with it."""
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)\
        .save_pretrained(tmp_path / "bert")
    from transformers import BertModel

    BertModel(BertConfig.from_pretrained(tmp_path / "bert")).save_pretrained(tmp_path / "bert")
    load = ("from transformers import AutoModel; import sys; "
            "AutoModel.from_pretrained(sys.argv[1])")
    silenced = ("from mmfl.cli import silence_progress; silence_progress(); " + load)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="", HF_HUB_DISABLE_PROGRESS_BARS="")
    for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(k)
    plain = subprocess.run([sys.executable, "-c", load, str(tmp_path / "bert")], env=env, capture_output=True, text=True)
    quiet = subprocess.run([sys.executable, "-c", silenced, str(tmp_path / "bert")], env=env, capture_output=True, text=True)
    assert plain.returncode == quiet.returncode == 0, plain.stderr + quiet.stderr
    assert "Loading weights" in plain.stderr
    assert "Loading weights" not in quiet.stderr and "%|" not in quiet.stderr
