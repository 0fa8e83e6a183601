"""``mmfl report`` against a real MLflow server: runs of two settings and three seeds, recorded by the
experiment session that both drivers use, compared with hand-computed statistics; costs of real runs."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmfl.data.dataset import DataSpec, ModalitySpec
from mmfl.engine.loop import run_experiment
from mmfl.engine.session import ExperimentSession
from mmfl.io import LocalStore
from mmfl.io.layout import load_round
from mmfl.io.tracking import MlflowTracker
from mmfl.methods import parse_experiment
from mmfl.state import RoundState
from tests.conftest import tiny_config_dict
from tests.helpers.comparison_runs import FINAL, ROUND_COSTS, ROUNDS, accuracy

ROOT = Path(__file__).resolve().parents[1]
SPEC = DataSpec((ModalitySpec("a", (8,), "vector"), ModalitySpec("b", (6,), "vector")), 4)


def _record(tmp_path: Path, uri: str, experiment: str, method: str, epochs: int, seed: int) -> None:
    """One experiment as the session records it, with chosen accuracies and round costs."""
    cfg = parse_experiment(tiny_config_dict(
        tmp_path, seed=seed, method={"name": method}, train={"rounds": ROUNDS, "local_epochs": epochs},
        eval={"every": 1, "patterns": ["full", "only:a"]}, tracking={"enabled": True, "uri": uri, "experiment": experiment}))
    session = ExperimentSession(cfg, LocalStore(tmp_path / "store"), MlflowTracker(uri, experiment))
    _, state = session.begin(SPEC)
    session.open_run()
    history = []
    for r in range(1, ROUNDS + 1):
        history.append({"round": r, "clients": [0, 1, 2, 3], "sampled": [0, 1, 2, 3], "failed": [], "rejected": [],
                        "train_loss": 1.0 / r, "costs": dict(ROUND_COSTS)})
        state = RoundState(r, state.tensors, {**state.meta, "history": list(history)})
        session.after_round(state, {p: {"acc": accuracy(method, epochs, seed, p, r), "f1": 0.5} for p in ("full", "only:a")})
    session.end(SPEC)


def _mmfl(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "mmfl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_report_groups_two_settings_over_three_seeds(tmp_path, mlflow_uri):
    experiment = "report-two-settings"
    for (method, epochs) in FINAL:
        for seed in range(3):
            _record(tmp_path, mlflow_uri, experiment, method, epochs, seed)
    out = tmp_path / "report"
    proc = _mmfl(["report", "--tracking-uri", mlflow_uri, "--experiment", experiment, "--baseline", "fedavg",
                  "--costs", "--format", "csv", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["method"], r["settings"]): r for r in csv.DictReader(io.StringIO(proc.stdout))}
    assert set(rows) == {("fedavg", "train.local_epochs=2"), ("fedavg", "train.local_epochs=5"),
                         ("fedprox", "train.local_epochs=2")}
    a2, a5, p2 = rows[("fedavg", "train.local_epochs=2")], rows[("fedavg", "train.local_epochs=5")], \
        rows[("fedprox", "train.local_epochs=2")]
    assert a2["seeds"] == a5["seeds"] == p2["seeds"] == "3" and a2["seed_list"] == "0 1 2"
    assert float(a2["acc/full/mean"]) == pytest.approx(0.84) and float(a2["acc/full/std"]) == pytest.approx(0.04)
    assert float(a5["acc/full/mean"]) == pytest.approx(0.87) and float(a5["acc/full/std"]) == pytest.approx(0.02)
    assert float(p2["acc/full/mean"]) == pytest.approx(0.85) and float(p2["acc/full/std"]) == pytest.approx(math.sqrt(0.0019))
    assert float(p2["acc/only:a/mean"]) == pytest.approx(0.75)
    assert float(p2["delta/full/mean"]) == pytest.approx(0.01) and float(p2["delta/full/std"]) == pytest.approx(math.sqrt(0.0003))
    assert (p2["delta/full/wins"], p2["delta/full/losses"]) == ("2", "1")
    # costs recorded by the session: per-round bytes and encoder updates from the history, wall and memory measured
    assert float(p2["cost/bytes_up_per_round/mean"]) == 1000.0 and float(p2["cost/bytes_down_per_round/mean"]) == 3000.0
    assert float(p2["cost/encoder_updates/mean"]) == 20.0 and float(p2["cost/client_updates/mean"]) == 8.0
    assert float(p2["cost/wall_s/mean"]) > 0 and float(p2["cost/client_updates_per_s/mean"]) > 0
    assert float(p2["cost/peak_rss_mb/mean"]) > 50
    # the files and one figure per test pattern, also logged to MLflow as a comparison run
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_full.png", "accuracy_only_a.png", "final_accuracy.png",
                                                     "report.csv", "report.html", "report.md"]
    assert (out / "accuracy_full.png").stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "Settings that differ between the rows: method.name, train.local_epochs" in md
    assert "| fedprox | train.local_epochs=2 | 3 | 85.0 ± 4.4 | +1.0 ± 1.7 (2/1) |" in md
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    (comparison,) = client.search_runs([exp.experiment_id], "tags.`mmfl.kind` = 'comparison'")
    logged = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    assert {"report.md", "report.csv", "report.html", "accuracy_full.png", "accuracy_only_a.png",
            "final_accuracy.png", "comparison.json"} <= logged
    # a second report does not count the comparison run as an experiment; a filter leaves runs out, and says so
    again = _mmfl(["report", "--tracking-uri", mlflow_uri, "--experiment", experiment, "--where",
                   "train.local_epochs=5", "--format", "markdown", "--no-mlflow"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "| fedavg | - | 3 | 87.0 ± 2.0 |" in again.stdout
    assert "6 runs not matching --where train.local_epochs=5 left out" in again.stdout


def test_real_runs_record_costs_budgets_and_overrides(tmp_path, mlflow_uri):
    experiment = "report-costs"
    tracking = {"enabled": True, "uri": mlflow_uri, "experiment": experiment}
    fedavg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2}, tracking=tracking))
    threefm = parse_experiment(tiny_config_dict(tmp_path, method={"name": "threefm"}, train={"rounds": 1},
                                                tracking=tracking))
    client = MlflowClient(mlflow_uri)
    result = run_experiment(fedavg)
    run = client.get_run(result.run_id)
    state, _ = load_round(LocalStore(tmp_path / "store"), result.experiment_id, 0)
    model_bytes = sum(t.numel() * t.element_size() for t in state.tensors.values())
    history = client.get_metric_history(result.run_id, "cost/bytes_up")
    assert [(m.step, m.value) for m in history] == [(1, 4 * model_bytes), (2, 4 * model_bytes)]  # 4 clients
    assert run.data.metrics["cost/bytes_down"] == 4 * model_bytes
    assert run.data.metrics["cost/client_updates"] == 4 and run.data.metrics["cost/round_wall_s"] > 0
    assert run.data.metrics["cost/local_steps"] > 0 and run.data.metrics["cost/peak_rss_mb"] > 50
    assert run.data.params["budget.local_epochs"] == "1" and run.data.params["override"] == "{}"
    run = client.get_run(run_experiment(threefm).run_id)
    assert run.data.params["override.train.batch_size"] == "full"  # 3FM: one meta-step on the whole shard
    assert run.data.params["override.train.optimizer"] == "Adam(lr=0.001)"
