"""Server-side continuation: the last task of a segment run submits the next segment itself.

A long experiment is a chain of segment runs (an Argo workflow must stay small). With the
pipeline parameter ``chain`` on, the last task of a run that leaves rounds to do asks the KFP API
server (from inside the cluster, with the pipeline's service account token) for its own run and
creates the next one with the same pipeline (inline spec or pipeline version), the same parameters
and the same service account. The submitting machine is not needed after the first run.

How many rounds are left is read from the store, so a chain stopped anywhere (a failed run, a
deleted run) continues with only the missing segments when any segment run is submitted again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mmfl.errors import MmflError
from mmfl.io.layout import latest_round

# KFP's API server as seen from a pipeline pod, and where Kubeflow's ``access-ml-pipeline``
# PodDefault projects the service-account token for it (multi-user mode).
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
HOST_ENV = "MMFL_KFP_API"
TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


def segment_name(exp_id: str, done: int, rounds: int, rounds_per_run: int) -> str:
    """Display name of the run that continues after ``done`` rounds: ``<experiment> segI/N``."""
    total = math.ceil(rounds / rounds_per_run)
    return f"{exp_id} seg{done // rounds_per_run + 1}/{total}"


def _token() -> str | None:
    path = Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH)
    return path.read_text().strip() if path.is_file() else None


def api_client(host: str = ""):
    import kfp

    host = host or os.environ.get(HOST_ENV) or IN_CLUSTER_HOST
    try:
        return kfp.Client(host=host, existing_token=_token())
    except Exception as exc:
        raise MmflError(f"{HOST_ENV} = {host!r}: cannot reach the Kubeflow Pipelines API ({type(exc).__name__}: {exc})") from None


def continue_task(config_json: str, run_id: str, start_round: int, rounds_per_run: int, host: str = "") -> dict[str, Any]:
    """Submit the next segment run if rounds are left and this run made progress; returns what it did."""
    import kfp_server_api

    from mmfl.kfp.tasks import load_cfg, store_of

    cfg = load_cfg(config_json)
    exp_id = cfg.experiment_id()
    done = latest_round(store_of(cfg), exp_id) or 0
    if done >= cfg.train.rounds:
        return {"experiment_id": exp_id, "round": done, "next_run_id": "", "why": "experiment complete"}
    if done <= start_round:  # nothing advanced: do not loop on a segment that cannot progress
        raise MmflError(f"run {run_id}: still at round {done} of {cfg.train.rounds} after this segment; not continuing")
    client = api_client(host)
    this = client.get_run(run_id)
    runtime = this.runtime_config
    body = kfp_server_api.V2beta1Run(
        display_name=segment_name(exp_id, done, cfg.train.rounds, rounds_per_run),
        experiment_id=this.experiment_id,
        pipeline_spec=this.pipeline_spec,
        pipeline_version_reference=this.pipeline_version_reference,
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=runtime.parameters if runtime else None,
                                                           pipeline_root=runtime.pipeline_root if runtime else None),
        service_account=this.service_account,
    )
    created = client._run_api.run_service_create_run(run=body)
    return {"experiment_id": exp_id, "round": done, "next_run_id": created.run_id, "why": body.display_name}
