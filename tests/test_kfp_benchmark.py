"""Benchmark glue in-process: grid cells, then the report's comparison of them, logged to MLflow."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from mlflow.tracking import MlflowClient

from mmfl.comparison import compare
from mmfl.errors import ConfigError
from mmfl.io.layout import latest_round, load_metrics
from mmfl.io.runs import experiment_runs
from mmfl.io.store import LocalStore
from mmfl.kfp.benchmark import benchmark_cells as grid_configs, collect_runs, compare_task, run_cell_task
from mmfl.kfp.tasks import load_cfg
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.server


def run_cells(tmp_path, cells, run_key=""):
    """Each cell as its pipeline task runs it; (the cells' config JSON, their MLflow run ids) as compare gets them."""
    cell_json, cell_runs = [], []
    for i, cfg in enumerate(cells):
        meta = run_cell_task(json.dumps(cfg.model_dump(mode="json")), str(tmp_path / f"cell{i}"), run_key=run_key,
                             kfp_run_id=run_key)
        assert meta["rounds"] == cfg.train.rounds and meta["experiment_id"] == cfg.experiment_id()
        manifest = json.loads((tmp_path / f"cell{i}").read_text())  # as the compare component reads it
        cell_json.append(manifest["config"])
        cell_runs.append(manifest["run_id"])
    return cell_json, cell_runs


def final_acc(root, cfg, pattern):
    store = LocalStore(root)
    return load_metrics(store, cfg.experiment_id(), latest_round(store, cfg.experiment_id()))["eval"][pattern]["acc"]


def test_grid_cells_then_comparison_in_mlflow(tmp_path, mlflow_uri):
    base = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 1},
                                         tracking={"enabled": True, "uri": mlflow_uri, "experiment": "bench-test"}))
    cells = grid_configs(base, ["fedavg", "zerofill"], [0.2, 0.6], [0, 1])
    assert [(c.method.name, c.missing.rate, c.seed) for c in cells][:4] == [
        ("fedavg", 0.2, 0), ("fedavg", 0.2, 1), ("fedavg", 0.6, 0), ("fedavg", 0.6, 1)]
    assert len(cells) == 8 and len({c.experiment_id() for c in cells}) == 8
    # two groups of two seeds that differ in method and rate keep the test short
    cells = [c for c in cells if (c.method.name, c.missing.rate) in (("fedavg", 0.2), ("zerofill", 0.6))]
    # a fresh benchmark run keeps its cells under its own prefix (the KFP run id)
    cell_json, cell_runs = run_cells(tmp_path, cells, run_key="run/7")
    assert json.loads(cell_json[0])["storage"]["root"] == f"{base.storage.root}/benchmarks/run-7"

    meta = compare_task(cell_json, "nightly", str(tmp_path / "report.html"), cell_runs,
                        {"kfp.run_id": "run/7", "kfp.run_name": "nightly-2026"})
    assert meta["cells"] == 4 and meta["mlflow_run_id"] and meta["patterns"].split(",")[0] == "full"
    html = (tmp_path / "report.html").read_text()
    assert "<table" in html and "zerofill" in html and "acc full (%)" in html and " ± " in html
    assert 'alt="accuracy_vs_missing_rate.png"' in html and html.count('src="data:image/png;base64,') >= 3

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

    def table(artifact):
        doc = json.loads(open(client.download_artifacts(run.info.run_id, artifact, str(tmp_path))).read())
        return [dict(zip(doc["columns"], r)) for r in doc["data"]]

    summary = table("benchmark_summary.json")
    # the report over the same cells, read back from MLflow as `mmfl report` reads them
    runs, _ = experiment_runs(mlflow_uri, "bench-test")
    report = compare(runs).records()
    # each cell read from the store is the run the report reads from MLflow, less what only MLflow holds
    logged = {r.experiment_id: r for r in runs}
    stored, _ = collect_runs([load_cfg(c) for c in cell_json], cell_runs)
    for cell in stored:
        want = logged[cell.experiment_id]
        assert (cell.run_id, cell.method, cell.seed, cell.rounds) == (want.run_id, want.method, want.seed, want.rounds)
        assert (cell.settings, cell.budget, cell.overrides, cell.results) == (want.settings, want.budget, want.overrides,
                                                                               want.results)
        assert cell.curves == want.curves and cell.costs == {k: want.costs[k] for k in cell.costs}
        assert set(want.costs) - set(cell.costs) == {"round_wall_s", "peak_rss_mb"}
    assert [(r["method"], r["settings"], r["seed_list"]) for r in summary] == [
        ("fedavg", "missing.rate=0.2", "0 1"), ("zerofill", "missing.rate=0.6", "0 1")]
    assert len(summary) == len(report) and table("comparison_table.json") == summary
    root = f"{base.storage.root}/benchmarks/run-7"
    for row, want in zip(summary, report):
        assert {k: v for k, v in row.items() if isinstance(v, str)} == {k: v for k, v in want.items() if isinstance(v, str)}
        for key in [k for k in want if k.startswith("acc/")]:
            assert row[key] == pytest.approx(want[key], nan_ok=True), key
        # mean ± sample std (n - 1) of the group's two cells, as computed from their checkpoints
        accs = [final_acc(root, c, "full") for c in cells if c.method.name == row["method"]]
        assert len(accs) == 2 and accs[0] != accs[1]  # two different seeds: the std tells n from n - 1
        assert row["acc/full/n"] == 2 and row["acc/full/mean"] == pytest.approx(statistics.fmean(accs))
        assert row["acc/full/std"] == pytest.approx(statistics.stdev(accs))
        assert row["acc/full/std"] != pytest.approx(statistics.pstdev(accs))
    matrix = table("benchmark_cells.json")
    assert len(matrix) == 4 * len(meta["patterns"].split(","))
    assert {(r["method"], r["seed"]) for r in matrix} == {(c.method.name, c.seed) for c in cells}


def test_comparison_without_tracking(tmp_path):
    """Tracking off: the cells are read from the store alone, with their curves and stored costs."""
    base = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2}))
    cells = grid_configs(base, ["fedavg"], [0.5], [0, 1])
    cell_json, cell_runs = run_cells(tmp_path, cells)
    assert cell_runs == ["", ""]
    meta = compare_task(cell_json, "offline", str(tmp_path / "report.html"), cell_runs)
    assert meta["cells"] == 2 and meta["mlflow_run_id"] == ""
    runs, rows = collect_runs(cells)
    assert [r.run_id for r in runs] == [c.experiment_id() for c in cells] and [r["seed"] for r in rows] == [0, 1]
    assert all(r.curves["full"][-1] == (2, r.results["full"]["acc"]) and len(r.curves["full"]) == 2 for r in runs)
    assert all(r.costs["client_updates"] > 0 and r.costs["bytes_up"] > 0 and "round_wall_s" not in r.costs for r in runs)
    comp = compare(runs)
    (group,) = comp.groups
    stat = comp.stat(group, "full")
    accs = [final_acc(base.storage.root, c, "full") for c in cells]
    assert stat.n == 2 and stat.mean == pytest.approx(statistics.fmean(accs))
    assert stat.std == pytest.approx(statistics.stdev(accs)) and not math.isnan(stat.std)
    html = (tmp_path / "report.html").read_text()
    assert f"{100 * stat.mean:.1f} ± {100 * stat.std:.1f}" in html


def test_compare_refuses_unfinished_cells(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2}))
    with pytest.raises(ConfigError, match="finished 0 of 2 rounds"):
        compare_task([json.dumps(cfg.model_dump(mode="json"))], "b", str(tmp_path / "r.html"))
