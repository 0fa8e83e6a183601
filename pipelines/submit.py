"""Submit runs and recurring runs to a Kubeflow Pipelines v2 API server (``mmfl submit|schedule``).

The config travels as a run parameter, so the compiled package is generic. A long experiment is a
chain of segment runs: with ``chain`` the client waits for each segment and submits the next;
without it, submitting again continues from the checkpoint the previous run left in the bucket.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmfl.config import ExperimentConfig
from mmfl.errors import MmflError
from pipelines.compile import CompileOptions, check_cron, compile_benchmark, compile_experiment, pipeline_arguments
from pipelines.segments import segments_needed

TOKEN_ENV = "MMFL_KFP_TOKEN"


@dataclass
class Submitted:
    experiment_id: str
    run_ids: list[str]
    segments: int


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


def submit(cfg: ExperimentConfig, host: str, experiment: str = "mmfl", opts: CompileOptions | None = None,
           benchmark: bool = False, chain: bool = False, namespace: str | None = None, timeout: int = 24 * 3600,
           log: Callable[[str], None] = print) -> Submitted:
    """Create (or reuse) the KFP experiment and start a run; with ``chain``, run every segment in turn."""
    opts = opts or CompileOptions()
    client = connect(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package, size = _package(cfg, benchmark, opts, Path(tmp))
        segments = 1 if benchmark else segments_needed(cfg, size)
        exp = client.create_experiment(name=experiment, namespace=namespace)
        arguments = pipeline_arguments(cfg, benchmark, opts)
        run_ids = []
        total = segments if chain else 1
        for i in range(total):
            name = (f"{opts.benchmark_name}" if benchmark else f"{cfg.experiment_id()}") + (f" seg{i + 1}/{total}" if total > 1 else "")
            result = client.create_run_from_pipeline_package(str(package), arguments=arguments, run_name=name,
                                                             experiment_id=exp.experiment_id, enable_caching=False)
            run_ids.append(result.run_id)
            log(f"submitted run {result.run_id} ({name})")
            if chain and i + 1 < total:
                state = _final_state(client.wait_for_run_completion(result.run_id, timeout=timeout))
                if state != "SUCCEEDED":
                    raise MmflError(f"run {result.run_id} ended {state}; fix and submit again to resume from its checkpoint")
    if not chain and segments > 1:
        log(f"this run covers {size} of {cfg.train.rounds} rounds; submit again (or use --chain) to continue "
            "from the checkpoint in the bucket")
    return Submitted(exp.experiment_id, run_ids, segments)


def _final_state(run: Any) -> str:
    return str(getattr(run, "state", None) or getattr(getattr(run, "run", None), "status", "UNKNOWN"))


def schedule(cfg: ExperimentConfig, host: str, cron: str, name: str | None = None, experiment: str = "mmfl-benchmarks",
             opts: CompileOptions | None = None, benchmark: bool = True, namespace: str | None = None,
             max_concurrency: int = 1) -> Any:
    """A recurring run (cron, KFP's 6-field format) of the benchmark (default) or experiment pipeline."""
    opts = opts or CompileOptions()
    cron = check_cron(cron)
    client = connect(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package, _ = _package(cfg, benchmark, opts, Path(tmp))
        exp = client.create_experiment(name=experiment, namespace=namespace)
        return client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name or f"{cfg.name}-{'benchmark' if benchmark else 'experiment'}",
            cron_expression=cron, max_concurrency=max_concurrency, no_catchup=True,
            params=pipeline_arguments(cfg, benchmark, opts), pipeline_package_path=str(package), enabled=True,
            enable_caching=False)
