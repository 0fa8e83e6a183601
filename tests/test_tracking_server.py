"""Tracking against a real `mlflow server` on 127.0.0.1."""

from mlflow.tracking import MlflowClient

from mmfl.local import run_experiment
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def test_run_logs_params_metrics_table_and_plot_to_mlflow_server(tmp_path, mlflow_uri):
    cfg = parse_experiment(tiny_config_dict(tmp_path, tracking={"enabled": True, "uri": mlflow_uri, "experiment": "t-server"}))
    result = run_experiment(cfg, progress=False)
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["partition.num_clients"] == "4"
    assert run.data.tags["mmfl.method"] == "fedavg"
    history = client.get_metric_history(result.run_id, "acc/full")
    assert [m.step for m in history] == [1, 2, 3]
    assert history[-1].value == result.final["full"]["acc"]
    for pattern in ("full", "only:a", "only:b"):
        assert f"f1/{pattern}" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"test_matrix.json", "accuracy_vs_round.png", "result.json"} <= artifacts


def test_a_multi_method_run_is_a_dated_parent_with_the_experiments_nested(tmp_path, mlflow_uri):
    """`mmfl run` with several methods (make run) records the comparison as a parent run."""
    import yaml

    from mmfl.cli import main

    raw = tiny_config_dict(tmp_path, train={"rounds": 1},
                           tracking={"enabled": True, "uri": mlflow_uri, "experiment": "t-compare"})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "exp.yaml"), "--method", "fedavg", "--method", "zerofill", "--no-progress"]) == 0
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("t-compare")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`mmfl.kind` = 'comparison'")
    assert parent.info.status == "FINISHED" and " 20" in parent.info.run_name and parent.info.run_name.endswith("UTC")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["mmfl.method"] for r in children) == ["fedavg", "zerofill"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison_table.json", "comparison_accuracy.png", "comparison_runs.json"} <= artifacts
    # the report's table over the nested runs: one seed each, so the mean is each run's final accuracy
    import json

    table = json.loads(open(client.download_artifacts(parent.info.run_id, "comparison_table.json", str(tmp_path))).read())
    rows = {r[table["columns"].index("method")]: dict(zip(table["columns"], r)) for r in table["data"]}
    assert sorted(rows) == ["fedavg", "zerofill"]
    for child in children:
        row = rows[child.data.tags["mmfl.method"]]
        assert row["seeds"] == 1 and row["acc/full/mean"] == child.data.metrics["acc/full"]
