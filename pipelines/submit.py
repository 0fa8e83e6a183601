"""Submit runs and recurring runs to a Kubeflow Pipelines v2 API server (``mmfl submit|schedule|upload``).

The config travels as a run parameter, so the compiled package is generic. A long experiment is a
chain of segment runs. With ``chain`` the chain continues server-side: the last task of each run
submits the next one through the KFP API (``mmfl/kfp/chain.py``), so the submitting machine can
go away. Submitting again resumes from the progress in the store: a chain stopped anywhere starts
again with only the missing segments (the client reads the progress when it can reach the store,
and every run's ``prepare`` reads it in any case).

``upload`` stores the compiled pipeline as a KFP pipeline version; ``submit``/``schedule`` can then
reference that version instead of sending the spec inline.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmfl.config import ExperimentConfig
from mmfl.errors import MmflError
from pipelines.compile import (CompileOptions, check_cron, compile_benchmark, compile_experiment, cost_of,
                               pipeline_arguments)
from pipelines.segments import segments_needed

TOKEN_ENV = "MMFL_KFP_TOKEN"


@dataclass
class Submitted:
    experiment_id: str
    run_ids: list[str]
    segments: int


@dataclass
class PipelineVersion:
    pipeline_id: str
    version_id: str
    name: str


def connect(host: str, namespace: str | None = None):
    """A ``kfp.Client``; a bearer token (e.g. a service account token) may come from $MMFL_KFP_TOKEN."""
    import kfp

    try:
        return kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get(TOKEN_ENV) or None)
    except Exception as exc:
        raise MmflError(f"--host {host}: cannot reach the Kubeflow Pipelines API ({type(exc).__name__}: {exc})") from None


def _package(cfg: ExperimentConfig, benchmark: bool, opts: CompileOptions, workdir: Path) -> tuple[Path, int]:
    if benchmark:
        return compile_benchmark(cfg, workdir / "benchmark.yaml", opts)
    return compile_experiment(cfg, workdir / "experiment.yaml", opts)


def store_progress(cfg: ExperimentConfig) -> int | None:
    """Rounds already completed in the config's store, or None when this machine cannot read it."""
    from mmfl.io import store_of
    from mmfl.io.layout import latest_round

    try:
        return latest_round(store_of(cfg.storage), cfg.experiment_id()) or 0
    except Exception:  # e.g. the cluster's object store is not reachable from here
        return None


def upload(cfg: ExperimentConfig, host: str, name: str, version: str, opts: CompileOptions | None = None,
           benchmark: bool = False, namespace: str | None = None) -> PipelineVersion:
    """Compile and upload as version ``version`` of pipeline ``name`` (created on first upload)."""
    opts = opts or CompileOptions()
    client = connect(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package, _ = _package(cfg, benchmark, opts, Path(tmp))
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(str(package), pipeline_name=name, namespace=namespace).pipeline_id
            versions = client.list_pipeline_versions(pipeline_id).pipeline_versions or []
            if versions:  # the first upload is the pipeline's first version
                return PipelineVersion(pipeline_id, versions[0].pipeline_version_id, version)
        made = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id)
        return PipelineVersion(pipeline_id, made.pipeline_version_id, version)


def submit(cfg: ExperimentConfig, host: str, experiment: str = "mmfl", opts: CompileOptions | None = None,
           benchmark: bool = False, chain: bool = False, namespace: str | None = None,
           version: PipelineVersion | None = None, log: Callable[[str], None] = print) -> Submitted:
    """Create (or reuse) the KFP experiment and start a run (with ``chain``, the first of the missing segments)."""
    opts = opts or CompileOptions()
    done = 0 if benchmark else store_progress(cfg)
    if not benchmark and done is not None and done >= cfg.train.rounds:
        log(f"{cfg.experiment_id()}: all {cfg.train.rounds} rounds are done in the store; nothing submitted")
        return Submitted("", [], 0)
    client = connect(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package, size = _package(cfg, benchmark, opts, Path(tmp))
        left = 1 if benchmark else segments_needed(cfg, size, done or 0)
        exp = client.create_experiment(name=experiment, namespace=namespace)
        arguments = pipeline_arguments(cfg, benchmark, opts, chain=chain and not benchmark,
                                       pipeline_version=version.name if version else "")
        if benchmark:
            name = opts.benchmark_name
        else:
            from mmfl.kfp.chain import segment_name

            name = segment_name(cfg.experiment_id(), done or 0, cfg.train.rounds, size) if left > 1 or done else cfg.experiment_id()
        if version is not None:
            result = client.run_pipeline(experiment_id=exp.experiment_id, job_name=name, params=arguments,
                                         pipeline_id=version.pipeline_id, version_id=version.version_id,
                                         enable_caching=False)
        else:
            result = client.create_run_from_pipeline_package(str(package), arguments=arguments, run_name=name,
                                                             experiment_id=exp.experiment_id, enable_caching=False)
    log(f"submitted run {result.run_id} ({name})")
    if not benchmark:
        progress = "unknown (store not reachable from here)" if done is None else f"{done} of {cfg.train.rounds}"
        log(f"rounds done: {progress}; {size} rounds per run; remaining cost: "
            f"{cost_of(cfg, opts, chain).line() if done is None else _cost_from(cfg, opts, chain, done)}")
        if left > 1 and not chain:
            log("submit again (or use --chain, which continues server-side) to continue from the checkpoint in the store")
    return Submitted(exp.experiment_id, [result.run_id], left)


def _cost_from(cfg: ExperimentConfig, opts: CompileOptions, chain: bool, done: int) -> str:
    from pipelines.segments import experiment_cost

    return experiment_cost(cfg, opts.rounds_per_task, opts.max_tasks, opts.fan_out, chain, done).line()


def schedule(cfg: ExperimentConfig, host: str, cron: str, name: str | None = None, experiment: str = "mmfl-benchmarks",
             opts: CompileOptions | None = None, benchmark: bool = True, namespace: str | None = None,
             max_concurrency: int = 1, version: PipelineVersion | None = None) -> Any:
    """A recurring run (cron, KFP's 6-field format) of the benchmark (default) or experiment pipeline."""
    opts = opts or CompileOptions()
    cron = check_cron(cron)
    client = connect(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package, _ = _package(cfg, benchmark, opts, Path(tmp))
        exp = client.create_experiment(name=experiment, namespace=namespace)
        source: dict[str, Any] = ({"pipeline_id": version.pipeline_id, "version_id": version.version_id}
                                  if version else {"pipeline_package_path": str(package)})
        return client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name or f"{cfg.name}-{'benchmark' if benchmark else 'experiment'}",
            cron_expression=cron, max_concurrency=max_concurrency, no_catchup=True,
            params=pipeline_arguments(cfg, benchmark, opts, pipeline_version=version.name if version else ""),
            enabled=True, enable_caching=False, **source)
