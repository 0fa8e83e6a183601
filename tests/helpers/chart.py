"""Rendering charts/mmfl with the pinned helm, and reading the rendered objects."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import yaml

from tests.helpers.tools import ROOT, helm_binary

CHART = ROOT / "charts" / "mmfl"
NAMESPACE = "mmfl-system"
# The two object-store modes, as an operator would set them (external: a Kubeflow SeaweedFS).
MINIO = ("pipelineNamespace=kubeflow",)
EXTERNAL = ("pipelineNamespace=kubeflow", "objectStore.mode=external",
            "objectStore.external.endpoint=seaweedfs.kubeflow:8333",
            "objectStore.external.existingSecret=mlpipeline-minio-artifact",
            "objectStore.bucket=mlpipeline", "objectStore.prefix=mmfl/runs", "objectStore.retentionDays=30")
MODES = {"minio": MINIO, "external": EXTERNAL}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


def render_proc(*sets: str) -> subprocess.CompletedProcess:
    args = [helm_binary(), "template", "mmfl", str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def render(*sets: str) -> str:
    proc = render_proc(*sets)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def documents(*sets: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render(*sets)) if d]


def by_kind_name(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] in WORKLOADS:
        return doc["spec"]["template"]["spec"]
    return None


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"Kind/name": pod spec} of every workload."""
    return {f"{d['kind']}/{d['metadata']['name']}": pod_spec(d) for d in docs if pod_spec(d) is not None}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """{name: value, or (Secret name, key) for a secretKeyRef}."""
    out = {}
    for e in container.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        out[e["name"]] = (ref["name"], ref["key"]) if ref else e.get("value")
    return out


def secrets_plan(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan the secrets hook Job gets ($PLAN)."""
    job = by_kind_name(docs)[("Job", "mmfl-mmfl-secrets")]
    return json.loads(env_of(pod_spec(job)["containers"][0])["PLAN"])
