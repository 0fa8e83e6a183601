"""A pipeline task's MLflow client against a real `mlflow server --app-name basic-auth`, started
the way the chart starts it (charts/mmfl/files/mlflow.sh: schema upgrades, then the server) with
the pipeline user the chart's users Job creates (charts/mmfl/files/mlflow_users.py).

The task authenticates with MLFLOW_TRACKING_USERNAME/PASSWORD, which the chart's Secret gives
every task; without them, or with a wrong password, MLflow refuses it (401) and the task's tracker
stops, without holding training up.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.request

import pytest
from mlflow.exceptions import MlflowException

from mmfl.config import parse_config
from mmfl.kfp.tasks import prepare_task
from tests.conftest import tiny_config_dict
from tests.helpers.servers import CHART_FILES, mlflow_auth_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    with mlflow_auth_server(tmp_path_factory.mktemp("mlflow-auth"), secrets.token_urlsafe(24),
                            secrets.token_urlsafe(24)) as server:
        yield server


def task_config(tmp_path, name: str) -> str:
    cfg = parse_config(tiny_config_dict(tmp_path, name=name, tracking={"enabled": True, "experiment": "auth-test"}))
    return json.dumps(cfg.model_dump(mode="json"))


def as_pod(monkeypatch, uri: str, user: tuple[str, str] | None) -> None:
    """The environment a task gets from the chart's ConfigMap and Secret."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var, value in zip(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), user or (None, None)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


def test_pipeline_task_authenticates_as_the_pipeline_user(auth_server, tmp_path, monkeypatch):
    as_pod(monkeypatch, auth_server.uri, auth_server.pipeline)
    start, _, meta = prepare_task(task_config(tmp_path, "auth-ok"), str(tmp_path / "checkpoint"))
    assert start == 0 and meta["round"] == 0
    from mlflow.tracking import MlflowClient

    as_pod(monkeypatch, auth_server.uri, auth_server.admin)
    client = MlflowClient(auth_server.uri)
    experiment = client.get_experiment_by_name("auth-test")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`mmfl.engine` = 'kfp'")
    assert [r.info.run_name for r in runs] == ["auth-ok/fedavg/s0"]
    # the pipeline user is an ordinary user, not an admin
    req = urllib.request.Request(f"{auth_server.uri}/api/2.0/mlflow/users/get?username=mmfl-pipeline")
    as_admin = urllib.request.urlopen(_basic(req, *auth_server.admin), timeout=10)
    assert json.loads(as_admin.read())["user"]["is_admin"] is False


def _basic(req: urllib.request.Request, user: str, password: str) -> urllib.request.Request:
    import base64

    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    return req


@pytest.mark.parametrize("user", [None, ("mmfl-pipeline", "not-the-password")], ids=["no-credentials", "wrong-password"])
def test_pipeline_task_is_refused_without_valid_credentials(auth_server, tmp_path, monkeypatch, caplog, user):
    """MLflow answers 401; the task's tracker stops there (training is never held up by tracking, the
    rounds are replayed by a later run with credentials) and no run appears in MLflow."""
    as_pod(monkeypatch, auth_server.uri, user)
    from mlflow.tracking import MlflowClient

    with pytest.raises(MlflowException, match="401"):
        MlflowClient(auth_server.uri).search_experiments()
    name = f"auth-refused-{user is None}"
    with caplog.at_level("WARNING", logger="mmfl.io.tracking"):
        start, _, _ = prepare_task(task_config(tmp_path, name), str(tmp_path / "checkpoint"))
    assert start == 0
    refused = [r.getMessage() for r in caplog.records if "tracking stopped" in r.getMessage()]
    assert refused and "401" in refused[0], caplog.text
    as_pod(monkeypatch, auth_server.uri, auth_server.admin)
    experiment = MlflowClient(auth_server.uri).get_experiment_by_name("auth-test")
    runs = MlflowClient(auth_server.uri).search_runs([experiment.experiment_id]) if experiment else []
    assert name not in {r.info.run_name.split("/")[0] for r in runs}
    # the probes' endpoint stays open
    assert urllib.request.urlopen(f"{auth_server.uri}/health", timeout=10).status == 200


def test_users_job_is_idempotent(auth_server):
    """On helm upgrade the users Job runs again: it sets the password instead of failing."""
    env = {"MLFLOW_URL": auth_server.uri, "MLFLOW_AUTH_ADMIN_USERNAME": auth_server.admin[0],
           "MLFLOW_AUTH_ADMIN_PASSWORD": auth_server.admin[1], "PIPELINE_USERNAME": auth_server.pipeline[0],
           "PIPELINE_PASSWORD": auth_server.pipeline[1], "WAIT_SECONDS": "10"}
    again = subprocess.run([sys.executable, str(CHART_FILES / "mlflow_users.py")], env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "MLflow user 'mmfl-pipeline' password set"
    wrong_admin = subprocess.run([sys.executable, str(CHART_FILES / "mlflow_users.py")], capture_output=True, text=True,
                                 env=dict(env, MLFLOW_AUTH_ADMIN_PASSWORD="wrong"), timeout=60)
    assert wrong_admin.returncode == 1 and "refused the admin credentials (HTTP 401)" in wrong_admin.stderr
