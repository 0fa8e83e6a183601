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
    assert set(spec["pipeline_spec"]["root"]["dag"]["tasks"]) == {"prepare", "condition-1"}  # rounds under conditions
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in spec["pipeline_spec"]["root"]["dag"]["tasks"].values())


def test_interrupted_chain_resumes_only_the_missing_segments(api, tmp_path):
    """Segments of 2 rounds, 5 rounds in all; the chain stopped after round 2. Submitting again
    starts segment 2/3; its last task submits 3/3 through the API; after that nothing more."""
    from mmfl.io import store_of
    from mmfl.kfp.chain import continue_task
    from mmfl.local import run_experiment

    host, state = api
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 5}))
    opts = CompileOptions(rounds_per_run=2, rounds_per_task=1, gpus=0)
    run_experiment(cfg, stop_after=2, progress=False)  # the first segment's progress in the store
    done = submit(cfg, host, experiment="chain", opts=opts, chain=True, log=lambda _: None)
    assert state.rejected == [] and done.segments == 2 and len(done.run_ids) == 1
    (first,) = _posts(state, "/runs")
    assert first["display_name"] == f"{cfg.experiment_id()} seg2/3"
    assert first["runtime_config"]["parameters"]["chain"] is True

    # the segment's last task (in the cluster) after it trained rounds 3-4: the next run, like this one
    run_experiment(cfg, stop_after=4, progress=False)
    config_json = json.dumps(cfg.model_dump(mode="json"))
    made = continue_task(config_json, done.run_ids[0], start_round=2, rounds_per_run=2, host=host)
    assert state.rejected == [] and made["next_run_id"]
    second = _posts(state, "/runs")[-1]
    assert second["display_name"] == f"{cfg.experiment_id()} seg3/3"
    assert second["pipeline_spec"] == first["pipeline_spec"]
    assert second["runtime_config"]["parameters"] == first["runtime_config"]["parameters"]
    assert second["experiment_id"] == first["experiment_id"]

    # a segment that made no progress does not loop; a finished experiment submits nothing
    with pytest.raises(MmflError, match="still at round 4 of 5"):
        continue_task(config_json, made["next_run_id"], start_round=4, rounds_per_run=2, host=host)
    run_experiment(cfg, progress=False)
    assert continue_task(config_json, made["next_run_id"], 4, 2, host)["next_run_id"] == ""
    assert submit(cfg, host, experiment="chain", opts=opts, chain=True, log=lambda _: None).run_ids == []
    assert len(_posts(state, "/runs")) == 2
    assert latest(store_of(cfg.storage), cfg) == 5


def latest(store, cfg):
    from mmfl.io.layout import latest_round

    return latest_round(store, cfg.experiment_id())


def test_upload_then_submit_and_schedule_a_version(api, config_file):
    host, state = api
    for v in ("v1", "v2"):
        assert main(["upload", str(config_file), "--host", host, "--name", "mmfl-exp", "--version", v]) == 0
    assert state.rejected == [] and len(state.pipelines) == 1 and len(state.versions) == 2
    (pid,) = state.pipelines
    vid = [k for k, v in state.versions.items() if v["display_name"] == "v2"][0]
    assert main(["submit", str(config_file), "--host", host, "--pipeline-id", pid, "--version-id", vid,
                 "--version-label", "v2"]) == 0
    run = _posts(state, "/runs")[-1]
    assert run["pipeline_version_reference"] == {"pipeline_id": pid, "pipeline_version_id": vid}
    assert "pipeline_spec" not in run or not run["pipeline_spec"]
    assert run["runtime_config"]["parameters"]["pipeline_version"] == "v2"
    assert main(["schedule", str(config_file), "--host", host, "--cron", "0 3 * * *", "--experiment-pipeline",
                 "--pipeline-id", pid, "--version-id", vid]) == 0
    job = _posts(state, "/recurringruns")[-1]
    assert job["pipeline_version_reference"]["pipeline_version_id"] == vid and state.rejected == []


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
