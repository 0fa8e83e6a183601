"""Benchmark glue in-process: grid cells, then the comparison table and plot logged to MLflow."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from mmfl.io.layout import latest_round, load_round
from mmfl.errors import ConfigError
from mmfl.io.store import LocalStore
from mmfl.kfp.benchmark import benchmark_cells as grid_configs, compare_task, run_cell_task
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.server


def test_grid_cells_then_comparison_in_mlflow(tmp_path, mlflow_uri):
    base = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 1},
                                         tracking={"enabled": True, "uri": mlflow_uri, "experiment": "bench-test"}))
    cells = grid_configs(base, ["fedavg", "zerofill"], [0.2, 0.6], [0])
    assert [(c.method.name, c.missing.rate) for c in cells] == [("fedavg", 0.2), ("fedavg", 0.6), ("zerofill", 0.2), ("zerofill", 0.6)]
    assert len({c.experiment_id() for c in cells}) == 4
    cells = [cells[0], cells[3]]  # two cells that differ in method and rate keep the test short
    cell_json, cell_runs = [], []
    for i, cfg in enumerate(cells):
        # a fresh benchmark run keeps its cells under its own prefix (the KFP run id)
        meta = run_cell_task(json.dumps(cfg.model_dump(mode="json")), str(tmp_path / f"cell{i}"), run_key="run/7",
                             kfp_run_id="run/7")
        assert meta["rounds"] == 1 and meta["experiment_id"] == cfg.experiment_id()
        manifest = json.loads((tmp_path / f"cell{i}").read_text())  # as the compare component reads it
        cell_json.append(manifest["config"])
        cell_runs.append(manifest["run_id"])
    assert json.loads(cell_json[0])["storage"]["root"] == f"{base.storage.root}/benchmarks/run-7"

    meta = compare_task(cell_json, "nightly", str(tmp_path / "report.html"), cell_runs,
                        {"kfp.run_id": "run/7", "kfp.run_name": "nightly-2026"})
    assert meta["cells"] == 2 and meta["mlflow_run_id"]
    html = (tmp_path / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html and "zerofill" in html

    client = MlflowClient(mlflow_uri)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mmfl.kind"] == "benchmark"
    assert run.data.tags["kfp.run_id"] == "run/7" and run.data.tags["kfp.run_name"] == "nightly-2026"
    # a dated parent run in the cells' experiment, the cells nested under it (as the MLflow UI shows them)
    assert client.get_experiment(run.info.experiment_id).name == "bench-test"
    assert run.info.run_name.startswith("nightly 20") and run.info.run_name.endswith("UTC")
    nested = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert sorted(r.info.run_id for r in nested) == sorted(cell_runs)
    assert all(r.data.tags["kfp.run_id"] == "run/7" and r.data.tags["mmfl.engine"] == "kfp" for r in nested)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"benchmark_summary.json", "benchmark_cells.json", "benchmark_accuracy_vs_missing_rate.png",
            "comparison_table.json", "comparison_accuracy.png"} <= arts
    summary = json.loads(open(client.download_artifacts(run.info.run_id, "benchmark_summary.json", str(tmp_path))).read())
    cols = summary["columns"]
    rows = [dict(zip(cols, r)) for r in summary["data"]]
    # one row per (method, rate, test pattern); with one seed the mean is the cell's own final accuracy
    store = LocalStore(f"{base.storage.root}/benchmarks/run-7")
    for cfg in cells:
        final = load_round(store, cfg.experiment_id(), latest_round(store, cfg.experiment_id()))[1]["eval"]
        for pattern, vals in final.items():
            (row,) = [r for r in rows if (r["method"], r["missing_rate"], r["test_pattern"]) == (cfg.method.name, cfg.missing.rate, pattern)]
            assert row["acc_mean"] == pytest.approx(vals["acc"]) and row["acc_std"] == 0 and row["seeds"] == 1


def test_compare_refuses_unfinished_cells(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2}))
    with pytest.raises(ConfigError, match="finished 0 of 2 rounds"):
        compare_task([json.dumps(cfg.model_dump(mode="json"))], "b", str(tmp_path / "r.html"))
