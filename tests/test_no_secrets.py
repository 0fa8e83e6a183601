"""Credentials only ever come from the environment or a Secret: none are written into code or configs."""

from __future__ import annotations

import pytest

from tests.helpers.codescan import CODE_DIRS, ROOT, secret_findings, text_files
from mmfl.methods import parse_experiment

SCANNED = CODE_DIRS + ("configs", "images", "Makefile")


def test_no_hard_coded_credentials():
    files = text_files(SCANNED)
    assert any(p.name == "config.py" for p in files)
    findings = [f for p in files for f in secret_findings(p.read_text(errors="replace"), str(p.relative_to(ROOT)))]
    assert findings == [], "hard-coded credentials:\n" + "\n".join(findings)


@pytest.mark.parametrize("source", [
    'password = "hunter2"',
    'MINIO_SECRET_KEY: str = "wJalrXUtnFEMI/K7MDENG"',
    'client = Minio("h:9000", access_key="mmfl", secret_key="s3cr3t-value")',
    'creds = {"accessKey": "admin", "secretKey": "changeme123"}',
    'def connect(user="a", password="letmein"): ...',
    'def connect(*, api_key="abc123def"): ...',
    'key = "AKIAIOSFODNN7EXAMPLE"',
    'defaults = {"user": "minioadmin"}',
    'uri = "postgresql://mlflow:mlflowpass@db:5432/mlflow"',
    '-----BEGIN RSA PRIVATE KEY-----',
])
def test_scanner_catches_credentials(source):
    name = "x.py" if not source.startswith("-----") else "x.pem"
    assert secret_findings(source, name), source


@pytest.mark.parametrize("source", [
    'ENV_SECRET_KEY = "MINIO_SECRET_KEY"',
    'secret = os.environ["MINIO_SECRET_KEY"]',
    'password = os.environ.get("MLFLOW_TRACKING_PASSWORD")',
    'keys = {"accesskey": "MINIO_ACCESS_KEY", "password": "MLFLOW_TRACKING_PASSWORD"}',
    'minio_secret: str = "mmfl-minio"',
    'password = ""',
    'def f(secret_key: str | None = None): ...',
    'uri = "postgresql://db:5432/mlflow"',
    'access_key = "<your access key>"',
])
def test_scanner_allows_references_to_credentials(source):
    assert secret_findings(source, "x.py") == [], source


@pytest.mark.parametrize("section, value, field", [
    ("tracking", {"uri": "http://alice:s3cret@mlflow:5000"}, "tracking.uri"),
    ("tracking", {"uri": "postgresql://mlflow:pw@db/mlflow"}, "tracking.uri"),
    ("tracking", {"uri": "https://token@mlflow.example.com"}, "tracking.uri"),
    ("storage", {"kind": "minio", "endpoint": "key:secret@minio:9000"}, "storage.endpoint"),
])
def test_config_refuses_credentials(tmp_path, section, value, field):
    from mmfl.errors import ConfigError
    from tests.conftest import tiny_config_dict

    with pytest.raises(ConfigError, match=f"{field}.*credentials must not be written into the config"):
        parse_experiment(tiny_config_dict(tmp_path, **{section: value}))


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite:////tmp/mlruns.db", "file:///tmp/x", "databricks"])
def test_config_accepts_uris_without_credentials(tmp_path, uri):
    from tests.conftest import tiny_config_dict

    assert parse_experiment(tiny_config_dict(tmp_path, tracking={"uri": uri})).tracking.uri == uri
