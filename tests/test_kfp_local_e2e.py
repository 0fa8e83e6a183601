"""The experiment pipeline run by kfp.local (one subprocess per task) against real servers.

State goes to a real S3 server (SeaweedFS) through MinioStore and metrics to a real MLflow
server. The result must equal the in-process local engine's for the same seed. (Resuming and
chaining segments is checked in-process in test_kfp_segments.py, where it costs no subprocesses.)
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import torch

from mmfl.io.layout import completed_rounds, load_round
from mmfl.local import run_experiment
from mmfl.io.minio_store import MinioStore
from mmfl.io.store import LocalStore
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.kfp_local import start_kfp_local
from pipelines.cluster import ClusterSettings

pytestmark = [pytest.mark.server, pytest.mark.slow]



def _metric_history(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in run.data.metrics}


def test_pipeline_matches_local_engine(s3_server, mlflow_uri, tmp_path, monkeypatch):
    from pipelines.experiment import build_experiment_pipeline

    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    raw = tiny_config_dict(tmp_path, train={"rounds": 3}, eval={"every": 1})
    pipe_cfg = parse_experiment({**raw, "storage": {"kind": "minio", "root": "runs", "bucket": bucket,
                                                "endpoint": s3_server.endpoint},
                             "tracking": {"enabled": True, "uri": mlflow_uri, "experiment": "kfp-e2e"}})
    local_cfg = parse_experiment({**raw, "tracking": {"enabled": True, "uri": mlflow_uri, "experiment": "local-e2e"}})
    assert pipe_cfg.experiment_id() == local_cfg.experiment_id()
    exp_id = pipe_cfg.experiment_id()

    # credentials reach the task processes only through the environment, as from a Secret
    start_kfp_local(tmp_path, monkeypatch, s3_server.env())

    # K = 2 rounds per task: rounds 1-2 in one task (the loop, in process), round 3 in the next
    pipeline = build_experiment_pipeline(pipe_cfg, rounds_per_task=2, settings=ClusterSettings(gpus=0))
    assert pipeline.rounds_per_run == 3  # two tasks of K = 2 cover the experiment's 3 rounds
    pipeline(config_json=json.dumps(pipe_cfg.model_dump(mode="json")), pipeline_version="v-test")
    store = MinioStore.from_env(bucket=bucket, prefix="runs", endpoint=s3_server.endpoint)

    reference = run_experiment(local_cfg, store=LocalStore(tmp_path / "local-store"), progress=False)
    ref_store = LocalStore(tmp_path / "local-store")

    assert completed_rounds(store, exp_id) == completed_rounds(ref_store, exp_id) == [0, 1, 2, 3]
    for r in (1, 2, 3):
        got_state, got_metrics = load_round(store, exp_id, r)
        ref_state, ref_metrics = load_round(ref_store, exp_id, r)
        assert got_state.tensors.keys() == ref_state.tensors.keys()
        for key, ref in ref_state.tensors.items():
            torch.testing.assert_close(got_state.tensors[key], ref, atol=1e-6, rtol=0)
        assert got_metrics == ref_metrics
        assert got_state.meta["history"] == ref_state.meta["history"]
    assert store.exists(f"{exp_id}/data/spec.json")

    # one MLflow run per experiment, finished, with the same per-round metrics as the local engine
    tracking = store.get_json(f"{exp_id}/tracking.json")
    assert tracking["finished"] is True
    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_uri).get_run(tracking["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mmfl.engine"] == "kfp"
    # the run names the KFP run that trained it; the KFP UI gets a Markdown link back to it
    assert run.data.tags["kfp.pipeline_version"] == "v-test" and run.data.tags["kfp.run_id"]
    assert run.data.tags["kfp.run_name"]
    links = list((tmp_path / "kfp-root").rglob("mlflow_run"))
    assert links and f"runs/{tracking['run_id']})" in links[0].read_text()
    got_hist, ref_hist = _metric_history(mlflow_uri, tracking["run_id"]), _metric_history(mlflow_uri, reference.run_id)
    assert got_hist.keys() == ref_hist.keys() and "acc/full" in got_hist
    for key in ref_hist:
        assert [s for s, _ in got_hist[key]] == [s for s, _ in ref_hist[key]] == [1, 2, 3]
        if key.startswith("cost/") and key.split("/", 1)[1] in ("round_wall_s", "peak_rss_mb", "peak_gpu_mb"):
            continue  # wall time and memory of the process that trained: not a result
        assert [v for _, v in got_hist[key]] == pytest.approx([v for _, v in ref_hist[key]], abs=1e-6), key
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(tracking["run_id"])}
    assert {"test_matrix.json", "result.json", "accuracy_vs_round.png"} <= artifacts


@pytest.mark.skipif(os.environ.get("MMFL_SLOW_TESTS") != "1",
                    reason="per-client fan-out under kfp.local takes minutes; set MMFL_SLOW_TESTS=1")
def test_fan_out_pipeline_matches_local_engine(tmp_path, monkeypatch):
    """One client_train task per sampled client (ParallelFor) and dsl.Collected fan-in."""
    from pipelines.experiment import build_experiment_pipeline

    raw = tiny_config_dict(tmp_path, train={"rounds": 1})
    cfg = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "pipe")}})
    ref = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}})
    start_kfp_local(tmp_path, monkeypatch)
    build_experiment_pipeline(cfg, fan_out=True, rounds_per_task=1,
                              settings=ClusterSettings(gpus=0))(config_json=json.dumps(cfg.model_dump(mode="json")))
    run_experiment(ref, progress=False)
    got, got_metrics = load_round(LocalStore(tmp_path / "pipe"), cfg.experiment_id(), 1)
    want, want_metrics = load_round(LocalStore(tmp_path / "ref"), cfg.experiment_id(), 1)
    assert got_metrics == want_metrics
    for key, value in want.tensors.items():
        torch.testing.assert_close(got.tensors[key], value, atol=1e-6, rtol=0)
    updates = [k for k in LocalStore(tmp_path / "pipe").list(cfg.experiment_id()) if k.endswith("/update.json")]
    assert len(updates) == 4  # one per client, each written by its own task


@pytest.mark.skipif(os.environ.get("MMFL_SLOW_TESTS") != "1",
                    reason="the benchmark pipeline under kfp.local takes minutes; set MMFL_SLOW_TESTS=1")
def test_benchmark_pipeline_runs(tmp_path, monkeypatch):
    """ParallelFor over the grid parameter, a fresh store prefix per run, fan-in to compare."""
    from mmfl.kfp.benchmark import benchmark_cells as grid_configs
    from pipelines.benchmark import build_benchmark_pipeline

    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 1}))
    cells = grid_configs(cfg, ["fedavg", "zerofill"], [0.5], [0])
    start_kfp_local(tmp_path, monkeypatch)
    build_benchmark_pipeline(cells, name="local", settings=ClusterSettings(gpus=0))()
    (run_dir,) = (Path(cfg.storage.root) / "benchmarks").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(c.experiment_id() for c in cells)
    (report,) = (tmp_path / "kfp-root").glob("*/compare/report")
    assert "fedavg" in report.read_text() and "zerofill" in report.read_text()
