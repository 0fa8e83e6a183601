"""Trackers that are dead, moved or hold credentials never hold training up or leak a secret."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmfl.methods import parse_experiment
from mmfl.io.layout import completed_rounds
from mmfl.local import run_experiment
from mmfl.errors import MmflError
from mmfl.io.store import LocalStore
from mmfl.io.tracking import open_tracker, safe_uri
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def tracked(tmp_path, uri, experiment="t-faults", **extra):
    return parse_experiment(tiny_config_dict(tmp_path, tracking={"enabled": True, "uri": uri, "experiment": experiment},
                                         **extra))


def test_dead_tracking_server_is_reported_at_once_and_every_round_is_checkpointed(tmp_path):
    port = closed_port()
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({**cfg.model_dump(mode="json"),
                                "tracking": {"enabled": True, "uri": f"http://127.0.0.1:{port}"}}))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mmfl", "run", str(path), "--no-progress"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    warnings = [line for line in err.splitlines() if "unreachable" in line]
    assert len(warnings) == 1 and f"tracking server http://127.0.0.1:{port} unreachable" in warnings[0]
    assert "training goes on without tracking" in warnings[0] and "Traceback" not in err
    assert completed_rounds(LocalStore(tmp_path / "store"), cfg.experiment_id()) == [0, 1, 2, 3]
    # the probe itself answers within seconds (the process above also imports torch and trains)
    t0 = time.monotonic()
    tracker = open_tracker(True, f"http://127.0.0.1:{port}", "x")
    assert time.monotonic() - t0 < 10 and not tracker.active
    assert time.monotonic() - t0 < 10


def test_history_is_replayed_to_a_new_tracker_and_a_renamed_experiment(tmp_path):
    offline = parse_experiment(tiny_config_dict(tmp_path))
    run_experiment(offline, progress=False)  # three rounds, no tracker
    db = f"sqlite:///{tmp_path / 'late.db'}"
    first = run_experiment(tracked(tmp_path, db, "exp-a"), progress=False)
    client = MlflowClient(tracking_uri=db)
    assert first.resumed_from == 3
    assert [m.step for m in client.get_metric_history(first.run_id, "train_loss")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(first.run_id, "acc/full")] == [1, 2, 3]
    moved = run_experiment(tracked(tmp_path, db, "exp-b"), progress=False)
    assert moved.run_id != first.run_id
    run = client.get_run(moved.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "exp-b"
    assert [m.step for m in client.get_metric_history(moved.run_id, "train_loss")] == [1, 2, 3]
    again = run_experiment(tracked(tmp_path, db, "exp-b"), progress=False)  # same place: same run, nothing twice
    assert again.run_id == moved.run_id
    assert [m.step for m in client.get_metric_history(moved.run_id, "train_loss")] == [1, 2, 3]
    doc = LocalStore(tmp_path / "store").get_json(f"{offline.experiment_id()}/tracking.json")
    assert doc["experiment"] == "exp-b" and doc["tracking_uri"] == db


def test_tracker_failing_mid_run_stops_tracking_not_training(tmp_path, caplog):
    db = tmp_path / "gone" / "t.db"
    db.parent.mkdir()
    cfg = tracked(tmp_path, f"sqlite:///{db}")
    tracker = open_tracker(True, f"sqlite:///{db}", "t-faults")
    real_log = tracker.inner.log_metrics

    def log_then_lose_the_database(metrics, step):
        real_log(metrics, step)
        if step == 1:
            tracker.inner.client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'missing' / 'x.db'}")

    tracker.inner.log_metrics = log_then_lose_the_database
    with caplog.at_level(logging.WARNING):
        result = run_experiment(cfg, tracker=tracker, progress=False)
    assert result.rounds_done == 3 and result.final is not None
    assert sum("tracking stopped" in r.getMessage() for r in caplog.records) == 1


def test_credentials_in_the_tracking_uri_are_never_written_or_printed(tmp_path, mlflow_uri, capfd, monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    secret_uri = mlflow_uri.replace("http://", "http://alice:S3cretPw@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    cfg = parse_experiment(tiny_config_dict(tmp_path, tracking={"enabled": True, "experiment": "t-secret"}))
    result = run_experiment(cfg, progress=False)
    assert result.run_id and os.environ["MLFLOW_TRACKING_PASSWORD"] == "S3cretPw"
    out, err = capfd.readouterr()
    stored = [p.read_text() for p in (tmp_path / "store").rglob("*.json")]
    assert all("S3cretPw" not in text for text in [out, err, *stored])
    doc = LocalStore(tmp_path / "store").get_json(f"{cfg.experiment_id()}/tracking.json")
    assert doc["tracking_uri"] == mlflow_uri


def test_secret_query_parameters_in_the_environment_are_refused():
    with pytest.raises(MmflError, match=r"credentials in its query string \(token\)") as info:
        safe_uri("http://127.0.0.1:5000/?token=QueryTok3n")
    assert "QueryTok3n" not in str(info.value)
    assert safe_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_report_against_a_dead_server_is_one_error_line(capsys):
    from mmfl.cli import main

    port = closed_port()
    t0 = time.monotonic()
    assert main(["report", "--tracking-uri", f"http://127.0.0.1:{port}", "--experiment", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: tracking server http://127.0.0.1:{port} unreachable (Connection refused)"
    assert time.monotonic() - t0 < 10


def test_two_processes_creating_one_fresh_sqlite_database(tmp_path):
    code = ("import sys; from mmfl.io.tracking import MlflowTracker; "
            "t = MlflowTracker(sys.argv[1], 'race'); print(t.experiment_id())")
    db = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, db], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert outs[0][0].strip() == outs[1][0].strip() != ""
