"""``mmfl submit`` and ``mmfl schedule`` against a local stand-in of the KFP v2 REST API."""

from __future__ import annotations

import json

import pytest
import yaml

from mmfl.cli import main
from mmfl.errors import MmflError
from mmfl.methods import parse_experiment
from pipelines.submit import submit
from pipelines.compile import CompileOptions
from tests.conftest import tiny_config_dict
from tests.helpers.kfp_api import kfp_api_stub


@pytest.fixture
def api():
    with kfp_api_stub() as (host, state):
        yield host, state


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, train={"rounds": 5})))
    return path


def _posts(state, path):
    return [body for method, p, body in state.requests if method == "POST" and p.endswith(path)]


def test_submit_creates_experiment_and_run(api, config_file, tmp_path):
    host, state = api
    assert main(["submit", str(config_file), "--host", host, "--experiment", "mmfl-test"]) == 0
    assert main(["submit", str(config_file), "--host", host, "--experiment", "mmfl-test"]) == 0
    assert state.rejected == []
    assert [e["display_name"] for e in _posts(state, "/experiments")] == ["mmfl-test"]  # reused the 2nd time
    runs = _posts(state, "/runs")
    assert len(runs) == 2
    body = runs[0]
    (exp_id,) = state.experiments
    assert body["experiment_id"] == exp_id
    local_cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 5}))
    sent = parse_experiment(json.loads(body["runtime_config"]["parameters"]["config_json"]))
    assert sent.experiment_id() == local_cfg.experiment_id() == body["display_name"]
    assert sent.storage.kind == "minio" and sent.storage.endpoint is None  # pods take it from the ConfigMap
    spec = body["pipeline_spec"]
    assert "kubernetes" in spec["platform_spec"]["platforms"]
    assert len(spec["pipeline_spec"]["root"]["dag"]["tasks"]) == 1 + 3 * 5
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in spec["pipeline_spec"]["root"]["dag"]["tasks"].values())


def test_submit_chain_runs_every_segment(api, tmp_path):
    host, state = api
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 5}))
    done = submit(cfg, host, experiment="chain", opts=CompileOptions(rounds_per_run=2), chain=True, log=lambda _: None)
    assert done.segments == 3 and len(done.run_ids) == 3
    assert [b["display_name"].split()[-1] for b in _posts(state, "/runs")] == ["seg1/3", "seg2/3", "seg3/3"]
    gets = [p for m, p, _ in state.requests if m == "GET" and "/runs/" in p]
    assert gets == [f"/apis/v2beta1/runs/{done.run_ids[0]}", f"/apis/v2beta1/runs/{done.run_ids[1]}"]
    state.run_state = "FAILED"
    with pytest.raises(MmflError, match="ended FAILED"):
        submit(cfg, host, experiment="chain", opts=CompileOptions(rounds_per_run=2), chain=True, log=lambda _: None)


def test_schedule_recurring_benchmark(api, config_file):
    host, state = api
    args = ["schedule", str(config_file), "--host", host, "--cron", "0 3 * * *", "--name", "nightly",
            "--method", "fedavg", "--method", "zerofill", "--rate", "0.3", "--rate", "0.7", "--seed", "0"]
    assert main(args) == 0
    assert state.rejected == []
    (body,) = _posts(state, "/recurringruns")
    assert body["display_name"] == "nightly"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["mode"] == "ENABLE" and body["no_catchup"] is True and int(body["max_concurrency"]) == 1
    params = body["runtime_config"]["parameters"]
    cells = [json.loads(c) for c in params["cells_json"]]
    assert sorted((c["method"]["name"], c["missing"]["rate"]) for c in cells) == [
        ("fedavg", 0.3), ("fedavg", 0.7), ("zerofill", 0.3), ("zerofill", 0.7)]
    assert [e["display_name"] for e in _posts(state, "/experiments")] == ["mmfl-benchmarks"]


def test_bad_cron_is_refused_before_contacting_the_server(config_file, capsys):
    assert main(["schedule", str(config_file), "--host", "http://127.0.0.1:9", "--cron", "daily"]) == 2
    assert "--cron = 'daily'" in capsys.readouterr().err


def test_grid_options_without_the_grid_are_refused(config_file, capsys):
    # Nothing is contacted: port 9 would refuse the connection.
    assert main(["submit", str(config_file), "--host", "http://127.0.0.1:9", "--method", "fedprox"]) == 2
    err = capsys.readouterr().err
    assert "--method" in err and "--benchmark" in err and "--set method.name" in err
    assert main(["schedule", str(config_file), "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *",
                 "--experiment-pipeline", "--seed", "3"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_options_are_not_abbreviated(config_file, tmp_path):
    # `--rounds` means train.rounds for `mmfl run`; here it must not turn into --rounds-per-run.
    with pytest.raises(SystemExit) as exc:
        main(["compile", str(config_file), "--out", str(tmp_path / "out"), "--rounds", "5"])
    assert exc.value.code == 2
    assert not (tmp_path / "out").exists()
