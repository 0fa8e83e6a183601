"""Faults inside the Kubeflow pipeline: failed and poisoned clients travel between tasks as
artifacts, and a client_train task whose process dies mid-round is retried and the run completes
with the result of the local engine.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

import mmfl.kfp.tasks as kfp_io
from mmfl.engine import robust
from mmfl.io.layout import completed_rounds, load_round, round_prefix
from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.kfp_local import start_kfp_local



def run_round_tasks(config_json: str, workdir: Path) -> None:
    """The tasks of a one-round segment, in order, with files as the artifacts between them."""
    workdir.mkdir(parents=True, exist_ok=True)
    start, _, _ = kfp_io.prepare_task(config_json, str(workdir / "checkpoint"))
    kfp_io.client_train_task(config_json, start, 0, str(workdir / "updates"))
    kfp_io.upload_prototypes_task(config_json, start, 0, str(workdir / "updates"), str(workdir / "uploads"))
    kfp_io.aggregate_task(config_json, start, 0, [str(workdir / "uploads")], str(workdir / "aggregated"))
    kfp_io.schedule_task(config_json, start, 0, str(workdir / "aggregated"), str(workdir / "scheduled"))
    kfp_io.evaluate_task(config_json, start, 0, str(workdir / "scheduled"), str(workdir / "done"))


def test_failed_and_poisoned_clients_travel_between_tasks(tmp_path):
    faults = [{"round": 1, "client": 1, "mode": "raise"}, {"round": 1, "client": 2, "mode": "nan"}]
    raw = tiny_config_dict(tmp_path / "kfp", train={"rounds": 1}, reliability={"fault_injection": faults})
    cfg = parse_experiment(raw)
    run_round_tasks(json.dumps(cfg.model_dump(mode="json")), tmp_path / "work")
    store, exp_id = LocalStore(cfg.storage.root), cfg.experiment_id()

    failed = store.get_update(kfp_io.client_key(exp_id, 1, "updates", 1))  # an artifact like any other
    assert robust.is_failed(failed) and failed.tensors == {} and "InjectedFault" in failed.meta["error"]
    state, metrics = load_round(store, exp_id, 1)
    entry = state.meta["history"][-1]
    assert entry["clients"] == [0, 3] and [f["client"] for f in entry["failed"]] == [1]
    assert [r["client"] for r in entry["rejected"]] == [2] and "non-finite" in entry["rejected"][0]["reason"]
    assert metrics["clients"]["aggregated"] == [0, 3] and metrics["clients"]["failed"][0]["client"] == 1
    assert all(torch.isfinite(v).all() for v in state.tensors.values() if v.is_floating_point())

    ref_cfg = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}})
    run_experiment(ref_cfg, progress=False)
    ref_state, ref_metrics = load_round(LocalStore(tmp_path / "ref"), exp_id, 1)
    assert ref_metrics == metrics and ref_state.meta == state.meta
    for key, value in ref_state.tensors.items():
        assert torch.equal(state.tensors[key], value), key


@pytest.mark.server
@pytest.mark.slow
def test_client_step_killed_mid_round_in_kfp_local_pipeline(s3_server, mlflow_uri, tmp_path, monkeypatch):
    """client 1's training kills its task process (exit 137, as an OOM kill) on the first attempt:
    KFP retries the task, which now trains every client; client 3 raises and the quorum carries on."""
    from mlflow.tracking import MlflowClient

    from mmfl.io.minio_store import MinioStore
    from pipelines.cluster import ClusterSettings
    from pipelines.experiment import build_experiment_pipeline

    marker = tmp_path / "client-1-killed"
    faults = [{"round": 1, "client": 1, "mode": "exit", "once_file": str(marker)},
              {"round": 1, "client": 3, "mode": "raise"}]
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    raw = tiny_config_dict(tmp_path, train={"rounds": 1}, reliability={"fault_injection": faults})
    cfg = parse_experiment({**raw, "storage": {"kind": "minio", "root": "runs", "bucket": bucket,
                                           "endpoint": s3_server.endpoint},
                        "tracking": {"enabled": True, "uri": mlflow_uri, "experiment": "kfp-faults"}})
    exp_id = cfg.experiment_id()
    start_kfp_local(tmp_path, monkeypatch, s3_server.env())

    pipeline = build_experiment_pipeline(cfg, settings=ClusterSettings(gpus=0, retries=1, backoff="0s"))
    pipeline(config_json=json.dumps(cfg.model_dump(mode="json")))
    assert marker.exists()  # the first attempt of client_train did die

    store = MinioStore.from_env(bucket=bucket, prefix="runs", endpoint=s3_server.endpoint)
    assert completed_rounds(store, exp_id) == [0, 1]
    state, metrics = load_round(store, exp_id, 1)
    assert metrics["clients"]["aggregated"] == [0, 1, 2] and metrics["clients"]["failed"][0]["client"] == 3

    # the same round in the local engine (without the process death, which would end this test)
    ref_raw = {**raw, "reliability": {"fault_injection": faults[1:]}}
    run_experiment(parse_experiment(ref_raw), progress=False)
    ref_state, ref_metrics = load_round(LocalStore(tmp_path / "store"), exp_id, 1)
    assert state.meta["history"] == ref_state.meta["history"]
    assert metrics["clients"] == ref_metrics["clients"]
    for key, value in ref_state.tensors.items():
        torch.testing.assert_close(state.tensors[key], value, atol=1e-6, rtol=0)

    run_id = store.get_json(f"{exp_id}/tracking.json")["run_id"]
    client = MlflowClient(mlflow_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "clients/failed")] == [(1, 1.0)]
    assert {a.path for a in client.list_artifacts(run_id, "clients")} == {"clients/round_00001.json"}
    assert not store.exists(f"{round_prefix(exp_id, 2)}/metrics.json")
