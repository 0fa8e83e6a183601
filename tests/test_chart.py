"""The Helm chart lints strictly, renders to schema-valid Kubernetes objects, and provides exactly
the Secrets/ConfigMap (names and keys) the compiled pipeline refers to."""

from __future__ import annotations

import base64
import subprocess

import yaml

from pipelines.cluster import CONFIG_MAP_KEYS, MINIO_SECRET_KEYS, MLFLOW_SECRET_KEYS, ClusterSettings
from tests.helpers.tools import ROOT, helm_binary, venv_tool

CHART = ROOT / "charts" / "mmfl"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def render(helm: str, *sets: str) -> str:
    args = [helm, "template", "mmfl", str(CHART), "--namespace", "mmfl-system"]
    for s in sets:
        args += ["--set", s]
    return run(args).stdout


def test_chart_lint_template_validate(tmp_path):
    helm = helm_binary()
    run([helm, "lint", "--strict", str(CHART)])
    run([helm, "lint", "--strict", str(CHART), "--set", "pipelineNamespace=kubeflow",
         "--set", "mlflow.username=u", "--set", "mlflow.password=p"])
    run([helm, "lint", "--strict", str(CHART), "--set", "pipelineNamespace=kubeflow",
         "--set", "minio.existingSecret=site-minio", "--set", "postgres.existingSecret=site-pg"])
    validate = venv_tool("kubernetes-validate")
    assert validate, "kubernetes-validate is not installed"
    for i, sets in enumerate([(), ("pipelineNamespace=kubeflow", "mlflow.username=u", "mlflow.password=p",
                                   "minio.storageClass=fast"),
                              ("pipelineNamespace=kubeflow", "minio.existingSecret=site-minio",
                               "postgres.existingSecret=site-pg")]):
        rendered = tmp_path / f"rendered{i}.yaml"
        rendered.write_text(render(helm, *sets))
        out = run([validate, "--strict", str(rendered)])
        assert "failed" not in out.stdout.lower() and "error" not in out.stdout.lower(), out.stdout


def test_chart_provides_what_the_pipeline_reads():
    docs = [d for d in yaml.safe_load_all(render(helm_binary(), "pipelineNamespace=kubeflow")) if d]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    names = ClusterSettings()
    minio = by[("Secret", names.minio_secret)]
    assert minio["metadata"]["namespace"] == "kubeflow"
    assert set(MINIO_SECRET_KEYS) == set(minio["data"])
    # the generated MinIO password is the same in the server's Secret and the pipeline's copy
    server = by[("Secret", "mmfl-mmfl-minio")]
    assert server["data"] == minio["data"] and len(base64.b64decode(minio["data"]["secretkey"])) == 32
    assert by[("Secret", names.mlflow_secret)]["metadata"]["namespace"] == "kubeflow"
    cm = by[("ConfigMap", names.config_map)]["data"]
    assert set(CONFIG_MAP_KEYS) <= set(cm)
    assert cm["MINIO_ENDPOINT"] == "mmfl-mmfl-minio.mmfl-system.svc.cluster.local:9000"
    assert cm["MLFLOW_TRACKING_URI"] == "http://mmfl-mmfl-mlflow.mmfl-system.svc.cluster.local:5000"
    with_auth = [d for d in yaml.safe_load_all(render(helm_binary(), "mlflow.username=u", "mlflow.password=p")) if d]
    secret = next(d for d in with_auth if d["kind"] == "Secret" and d["metadata"]["name"] == names.mlflow_secret)
    assert set(secret["data"]) == set(MLFLOW_SECRET_KEYS)
    # the MLflow server keeps runs in PostgreSQL and artifacts in the MinIO bucket
    mlflow = by[("Deployment", "mmfl-mmfl-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(mlflow["args"])
    assert "--backend-store-uri=postgresql://" in args and "--artifacts-destination=s3://mlflow" in args
    assert {"MLFLOW_S3_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"} <= {e["name"] for e in mlflow["env"]}
    # no credential is written into the chart's defaults
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["minio"]["rootPassword"] == "" and values["postgres"]["password"] == ""
