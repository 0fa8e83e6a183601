"""The Helm chart renders no credential at all.

Every password is generated once in the cluster by the secrets hook (random, never overwritten)
or comes from a Secret the installer names; none is written into the chart or its values, none
appears in a render, and the servers read only Secrets (the database password never on a command line).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helpers.chart import CHART, MINIO, MODES, documents, env_of, secrets_plan, workloads
from tests.helpers.codescan import SECRET_NAME

if not (CHART / "Chart.yaml").exists():
    pytest.skip("charts/mmfl is not in this tree", allow_module_level=True)

PASSWORD_KEYS = {"secretkey", "password", "admin-password", "flask-secret-key"}


def walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    else:
        yield path, node


def secret_sources(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str]]]:
    """{env name: {(Secret name, key)}} over every container of every workload."""
    out: dict[str, set[tuple[str, str]]] = {}
    for spec in workloads(docs).values():
        for c in spec.get("initContainers", []) + spec["containers"]:
            for name, value in env_of(c).items():
                if isinstance(value, tuple):
                    out.setdefault(name, set()).add(value)
    return out


def test_values_file_holds_no_credentials():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not [(p, v) for p, v in walk(values) if SECRET_NAME.search(p.rsplit(".", 1)[-1])], \
        "values.yaml has credential fields; credentials belong in Secrets"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_render_contains_no_secret_data(mode):
    docs = documents(*MODES[mode])
    for d in docs:
        if d["kind"] == "Secret":  # only the tasks' MLflow Secret when auth is off, never here
            pytest.fail(f"Secret {d['metadata']['name']} rendered with data")
    for spec in workloads(docs).values():
        for c in spec.get("initContainers", []) + spec["containers"]:
            for name, value in env_of(c).items():
                assert not (SECRET_NAME.search(name) and isinstance(value, str) and value), (name, value)


def test_the_hook_generates_every_password_randomly():
    plan = secrets_plan(documents(*MINIO))
    created = {item["name"]: item["data"] for item in plan["create"]}
    assert set(created) == {"mmfl-mmfl-minio", "mmfl-mmfl-pipeline-s3", "mmfl-mmfl-postgres", "mmfl-mmfl-mlflow-auth",
                            "mmfl-mmfl-mlflow-pipeline"}
    for name, data in created.items():
        for key, how in data.items():
            if key in PASSWORD_KEYS:
                assert how.get("random", 0) >= 32, (name, key, how)  # never a fixed value
            else:
                assert "value" in how, (name, key)
    assert created["mmfl-mmfl-pipeline-s3"]["accesskey"] == {"value": "mmfl-pipeline"}
    assert plan["require"] == []


def test_existing_secrets_replace_every_generated_credential():
    """The installer's Secrets: every reader points there, the hook only checks them and generates nothing for them."""
    docs = documents(*MINIO, "minio.existingSecret=site-minio", "postgres.existingSecret=site-pg",
                     "mlflow.auth.existingSecret=site-mlflow")
    plan = secrets_plan(docs)
    assert {item["name"] for item in plan["create"]} == {"mmfl-mmfl-pipeline-s3", "mmfl-mmfl-mlflow-pipeline"}
    assert {item["name"] for item in plan["require"]} == {"site-minio", "site-pg", "site-mlflow"}
    sources = secret_sources(docs)
    for env in ("MINIO_ROOT_USER", "ROOT_USER", "AWS_ACCESS_KEY_ID"):
        assert sources[env] == {("site-minio", "accesskey")}, (env, sources[env])
    for env in ("MINIO_ROOT_PASSWORD", "ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        assert sources[env] == {("site-minio", "secretkey")}, (env, sources[env])
    assert sources["POSTGRES_USER"] == sources["PG_USER"] == {("site-pg", "user")}
    assert sources["POSTGRES_PASSWORD"] == sources["PGPASSWORD"] == {("site-pg", "password")}
    assert sources["MLFLOW_AUTH_ADMIN_PASSWORD"] == {("site-mlflow", "admin-password")}
    # secrets.generate=false: no hook, no RBAC; the chart only refers to Secrets by name
    manual = documents(*MINIO, "secrets.generate=false")
    assert not [d for d in manual if d["kind"] in ("Role", "RoleBinding") or d["metadata"]["name"].endswith("-secrets")
                and d["kind"] in ("Job", "ServiceAccount")]


def test_secrets_hook_rbac_is_limited_to_named_secrets():
    docs = documents(*MINIO)
    roles = {d["metadata"]["namespace"]: d["rules"] for d in docs if d["kind"] == "Role"}
    assert set(roles) == {"mmfl-system", "kubeflow"}
    for ns, rules in roles.items():
        for rule in rules:
            assert rule["resources"] == ["secrets"], rule
            assert rule["verbs"] == ["create"] or rule.get("resourceNames"), (ns, rule)  # get/update only by name
    assert {"get", "update"} == {v for r in roles["kubeflow"] if r.get("resourceNames") for v in r["verbs"]}
    assert set(next(r for r in roles["kubeflow"] if r.get("resourceNames"))["resourceNames"]) == {"mmfl-minio", "mmfl-mlflow"}
    for d in (d for d in docs if d["kind"] in ("Role", "RoleBinding", "ServiceAccount", "Job")
              and d["metadata"]["name"] == "mmfl-mmfl-secrets"):
        assert "pre-install" in d["metadata"]["annotations"]["helm.sh/hook"], d["kind"]


def test_database_password_is_not_on_the_command_line():
    """MLflow gets the PostgreSQL password from the environment (libpq's PGPASSWORD), not from argv."""
    for sets, secret in ((MINIO, "mmfl-mmfl-postgres"), (MINIO + ("postgres.existingSecret=site-pg",), "site-pg")):
        docs = documents(*sets)
        spec = workloads(docs)["Deployment/mmfl-mmfl-mlflow"]
        for c in spec["initContainers"] + spec["containers"]:
            env = env_of(c)
            uri = env["DB_URI"]
            assert uri.startswith("postgresql://$(PG_USER)@") and ":" not in uri.split("://", 1)[1].split("@", 1)[0]
            assert env["PGPASSWORD"] == (secret, "password")
            assert "PASSWORD" not in " ".join(c["command"][-2:]).upper()
