"""The chart's Job scripts run for real: the secrets hook (with the plan the chart renders) against
a local stand-in of the Kubernetes Secret API, the retention rule against SeaweedFS."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers.chart import CHART, MINIO, documents, secrets_plan
from tests.helpers.k8s_api import secrets_api

HOOK = CHART / "files" / "ensure_secrets.py"


def run_hook(api, plan: dict, tmp_path, token: str | None = None) -> subprocess.CompletedProcess:
    token_file = tmp_path / "token"
    token_file.write_text(token or api.token)
    env = dict(os.environ, PLAN=json.dumps(plan), KUBERNETES_API=api.url, SA_TOKEN_FILE=str(token_file))
    return subprocess.run([sys.executable, str(HOOK)], capture_output=True, text=True, timeout=60, env=env)


def decoded(api, ns: str, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in api.secrets[(ns, name)]["data"].items()}


def test_secrets_hook_generates_once_copies_and_keeps_passwords_on_resync(tmp_path):
    plan = secrets_plan(documents(*MINIO))
    with secrets_api(token="sa-token-1") as api:
        first = run_hook(api, plan, tmp_path)
        assert first.returncode == 0, first.stderr
        assert set(api.secrets) == {("mmfl-system", n) for n in ("mmfl-mmfl-minio", "mmfl-mmfl-pipeline-s3",
                                    "mmfl-mmfl-postgres", "mmfl-mmfl-mlflow-auth", "mmfl-mmfl-mlflow-pipeline")} \
            | {("kubeflow", "mmfl-minio"), ("kubeflow", "mmfl-mlflow")}
        root, pipeline = decoded(api, "mmfl-system", "mmfl-mmfl-minio"), decoded(api, "mmfl-system", "mmfl-mmfl-pipeline-s3")
        assert root["accesskey"] == "mmfl" and pipeline["accesskey"] == "mmfl-pipeline"
        assert len(root["secretkey"]) == 40 and root["secretkey"] != pipeline["secretkey"]
        # the tasks get the scoped user, not root
        assert decoded(api, "kubeflow", "mmfl-minio") == pipeline
        assert decoded(api, "kubeflow", "mmfl-mlflow") == decoded(api, "mmfl-system", "mmfl-mmfl-mlflow-pipeline")
        before = {k: dict(v["data"]) for k, v in api.secrets.items()}
        # a re-sync (helm upgrade, Argo CD PreSync) changes nothing ...
        second = run_hook(api, plan, tmp_path)
        assert second.returncode == 0 and {k: v["data"] for k, v in api.secrets.items()} == before
        assert second.stdout.count("kept Secret") == 5 and second.stdout.count("is current") == 2
        assert [m for m, _ in api.requests[len(api.requests) - 7:]] == ["GET"] * 7  # reads only
        # ... and restores a copy someone edited
        api.secrets[("kubeflow", "mmfl-minio")]["data"]["secretkey"] = base64.b64encode(b"edited").decode()
        third = run_hook(api, plan, tmp_path)
        assert third.returncode == 0 and "updated copy kubeflow/mmfl-minio" in third.stdout
        assert decoded(api, "kubeflow", "mmfl-minio") == pipeline


def test_secrets_hook_refuses_with_one_line(tmp_path):
    plan = secrets_plan(documents(*MINIO, "postgres.existingSecret=site-pg"))
    with secrets_api(token="sa-token-2") as api:
        missing = run_hook(api, plan, tmp_path)
        assert missing.returncode == 1
        assert missing.stderr.strip() == ("error: Secret mmfl-system/site-pg does not exist; "
                                          "create it with the keys user, password")
        api.secrets[("mmfl-system", "site-pg")] = {"metadata": {"name": "site-pg", "namespace": "mmfl-system"},
                                                   "data": {"user": base64.b64encode(b"mlflow").decode()}}
        no_key = run_hook(api, plan, tmp_path)
        assert no_key.returncode == 1 and "Secret mmfl-system/site-pg has no key 'password'" in no_key.stderr
        forbidden = run_hook(api, plan, tmp_path, token="wrong-token")
        assert forbidden.returncode == 1 and "HTTP 401" in forbidden.stderr


@pytest.fixture(scope="module")
def retention():
    spec = importlib.util.spec_from_file_location("chart_retention", CHART / "files" / "retention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.server
def test_retention_rule_on_seaweedfs_keeps_other_rules(s3_server, retention):
    from minio import Minio
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule

    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    bucket = "retention-test"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    # a rule of the bucket's owner (as on Kubeflow's shared mlpipeline bucket) must survive
    client.set_bucket_lifecycle(bucket, LifecycleConfig([Rule(ENABLED, rule_filter=Filter(prefix="artifacts/"),
                                                              rule_id="owner", expiration=Expiration(days=90))]))
    assert retention.apply_retention(client, bucket, "mmfl/runs", 30) == [("owner", "artifacts/", 90),
                                                                          ("mmfl-retention", "mmfl/runs/", 30)]
    assert retention.apply_retention(client, bucket, "mmfl/runs", 7) == [("owner", "artifacts/", 90),
                                                                         ("mmfl-retention", "mmfl/runs/", 7)]
    assert retention.apply_retention(client, bucket, "mmfl/runs", 0) == [("owner", "artifacts/", 90)]
    with pytest.raises(ValueError, match="retentionDays = -1"):
        retention.apply_retention(client, bucket, "runs", -1)
    # the Job's entry point, with the environment the chart gives it
    env = dict(os.environ, S3_ENDPOINT=s3_server.endpoint, S3_SECURE="false", AWS_ACCESS_KEY_ID=s3_server.access_key,
               AWS_SECRET_ACCESS_KEY=s3_server.secret_key, BUCKET=bucket, PREFIX="runs", DAYS="14")
    proc = subprocess.run([sys.executable, str(CHART / "files" / "retention.py")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "('mmfl-retention', 'runs/', 14)" in proc.stdout and "('owner', 'artifacts/', 90)" in proc.stdout
