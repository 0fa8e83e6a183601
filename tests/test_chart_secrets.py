"""The Helm chart ships no default passwords.

Every credential comes from a value the installer provides, an existing Secret, or is generated
per install; none is written into the chart, and none appears in plain text outside a Secret.
Rendered with the chart's own pinned helm; skipped where the chart or helm are not in the tree.
"""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import pytest
import yaml

from tests.helpers import tools
from tests.helpers.codescan import SECRET_NAME

CHART = tools.ROOT / "charts" / "mmfl"
if not (CHART / "Chart.yaml").exists():
    pytest.skip("charts/mmfl is not in this tree", allow_module_level=True)

WELL_KNOWN = {"minioadmin", "minio123", "admin", "password", "changeme", "secret", "mlflow", "postgres", "root",
              "mmfl", "test", "123456"}
PASSWORD_KEYS = {"secretkey", "password", "rootpassword", "secret_key", "aws_secret_access_key"}


def render(*sets: str) -> subprocess.CompletedProcess:
    args = [tools.helm_binary(), "template", "mmfl", str(CHART), "--namespace", "mmfl-system"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def documents(*sets: str) -> list[dict[str, Any]]:
    proc = render(*sets)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def secret_passwords(docs: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """{(secret name, key): decoded value} for every password-like key of every rendered Secret."""
    out = {}
    for d in docs:
        if d["kind"] != "Secret":
            continue
        data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
        data.update(d.get("stringData") or {})
        for key, value in data.items():
            if key.lower() in PASSWORD_KEYS:
                out[(d["metadata"]["name"], key)] = value
    return out


def secret_refs(docs: list[dict[str, Any]], env_name: str) -> set[str]:
    """Names of the Secrets that containers read ``env_name`` from."""
    names = set()
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if e["name"] == env_name and ref:
                    names.add(ref["name"])
    return names


def walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    else:
        yield path, node


def test_values_file_holds_no_credentials():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    credential_fields = [(p, v) for p, v in walk(values) if SECRET_NAME.search(p.rsplit(".", 1)[-1])]
    assert credential_fields, "the scan found no credential fields in values.yaml"
    assert [(p, v) for p, v in credential_fields if v not in ("", None)] == []


def test_default_render_has_no_baked_in_password():
    """Without user values, each password is generated per install (or rendering fails clearly)."""
    first, second = render(), render()
    if first.returncode != 0:  # the other acceptable policy: refuse to install without credentials
        assert "password" in first.stderr.lower() or "secret" in first.stderr.lower(), first.stderr
        return
    a, b = (secret_passwords([d for d in yaml.safe_load_all(p.stdout) if d]) for p in (first, second))
    assert a, "no password-like keys in the rendered Secrets"
    for where, value in a.items():
        assert value.lower() not in WELL_KNOWN and len(value) >= 16, f"{where}: weak or well-known password"
        assert value != b[where], f"{where}: the same password in two installs, so it is baked into the chart"
    plain = [v for v in a.values() if v in first.stdout]
    assert plain == [], "a password appears in plain text in the rendered manifests"


def test_user_provided_credentials_are_used_everywhere():
    docs = documents("minio.rootPassword=Xq7-user-minio-pass-91", "postgres.password=Pg4-user-db-pass-77")
    passwords = secret_passwords(docs)
    minio = {w: v for w, v in passwords.items() if w[1] == "secretkey"}
    assert minio and set(minio.values()) == {"Xq7-user-minio-pass-91"}
    assert "Pg4-user-db-pass-77" in passwords.values()
    rendered = yaml.safe_dump_all(docs)
    assert "Xq7-user-minio-pass-91" not in rendered and "Pg4-user-db-pass-77" not in rendered  # only base64, in Secrets


def test_existing_secret_is_honoured():
    """With ``minio.existingSecret`` the servers read that Secret and the chart generates no MinIO password."""
    docs = documents("minio.existingSecret=site-minio-credentials")
    assert secret_refs(docs, "MINIO_ROOT_PASSWORD") == {"site-minio-credentials"}, \
        "the MinIO server does not read minio.existingSecret"
    assert secret_refs(docs, "AWS_SECRET_ACCESS_KEY") <= {"site-minio-credentials"}, \
        "MLflow does not read minio.existingSecret"
    generated = {w for w in secret_passwords(docs) if w[1] == "secretkey"}
    assert generated == set(), f"Secrets {sorted(generated)} carry a generated MinIO password that the server does not use"


def env_sources(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str]]]:
    """{env name: {(Secret name, key)}} over every container of every workload."""
    out: dict[str, set[tuple[str, str]]] = {}
    for d in docs:
        spec = d.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    out.setdefault(e["name"], set()).add((ref["name"], ref["key"]))
    return out


def test_existing_secrets_replace_every_generated_credential():
    """Both servers on the installer's Secrets: every reader points there and nothing is generated."""
    docs = documents("minio.existingSecret=site-minio", "postgres.existingSecret=site-pg",
                     "pipelineNamespace=kubeflow")
    assert secret_passwords(docs) == {}, "a password was generated although both Secrets are given"
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    assert not secrets & {"mmfl-mmfl-minio", "mmfl-mmfl-postgres"}, secrets
    sources = env_sources(docs)
    for env in ("MINIO_ROOT_USER", "ACCESS_KEY", "AWS_ACCESS_KEY_ID"):
        assert sources[env] == {("site-minio", "accesskey")}, (env, sources[env])
    for env in ("MINIO_ROOT_PASSWORD", "SECRET_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert sources[env] == {("site-minio", "secretkey")}, (env, sources[env])
    assert sources["POSTGRES_USER"] == sources["PG_USER"] == {("site-pg", "user")}
    assert sources["POSTGRES_PASSWORD"] == sources["PGPASSWORD"] == {("site-pg", "password")}
    assert {name for refs in sources.values() for name, _ in refs} == {"site-minio", "site-pg"}
    # a PostgreSQL Secret alone leaves the MinIO password generated and shared by its readers
    pg_only = documents("postgres.existingSecret=site-pg")
    assert {w[0] for w in secret_passwords(pg_only)} == {"mmfl-mmfl-minio", "mmfl-minio"}
    assert secret_refs(pg_only, "MINIO_ROOT_PASSWORD") == {"mmfl-mmfl-minio"}


def test_database_password_is_not_on_the_command_line():
    """MLflow gets the PostgreSQL password from the environment (libpq's PGPASSWORD), not from argv."""
    for sets, secret in (((), "mmfl-mmfl-postgres"), (("postgres.existingSecret=site-pg",), "site-pg")):
        docs = documents(*sets)
        mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mmfl-mmfl-mlflow")
        container = mlflow["spec"]["template"]["spec"]["containers"][0]
        argv = " ".join(container.get("command", []) + container["args"])
        uri = next(a for a in container["args"] if a.startswith("--backend-store-uri="))
        userinfo = uri.split("://", 1)[1].split("@", 1)[0]
        assert ":" not in userinfo and "PASSWORD" not in argv.upper(), argv
        assert env_sources(docs)["PGPASSWORD"] == {(secret, "password")}
