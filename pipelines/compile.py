"""Compile the experiment and benchmark pipelines to KFP v2 YAML (``mmfl compile``, ``make compile``).

A config written for the local engine (LocalStore, sqlite MLflow) is turned into its cluster form:
state in the MinIO bucket and the MLflow server named by the pods' environment (ConfigMap/Secret).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmfl.config import ExperimentConfig, parse_config
from mmfl.errors import ConfigError
from mmfl.methods import resolve
from pipelines.cluster import ClusterSettings, load_cluster_settings
from pipelines.segments import DEFAULT_ROUNDS_PER_TASK, Cost, experiment_cost


def cluster_config(cfg: ExperimentConfig, gpus: int = 1) -> ExperimentConfig:
    """The same experiment, with storage and tracking that pods can reach (experiment id unchanged).

    GPU tasks train on the device the pod has (``train.device: auto``); a config that pins the CPU
    while tasks request GPUs is refused, since every GPU would sit idle."""
    data = cfg.model_dump(mode="json")
    if gpus > 0 and str(data["train"]["device"]).startswith("cpu"):
        raise ConfigError(f"train.device = {data['train']['device']!r} with --gpus {gpus}: GPU tasks would hold a GPU "
                          "and train on the CPU; use train.device=auto (the default) or --gpus 0")
    if data["storage"]["kind"] != "minio":
        data["storage"] = {"kind": "minio", "root": "runs", "bucket": data["storage"]["bucket"], "endpoint": None,
                           "secure": False}
    uri = data["tracking"].get("uri")
    if uri and not uri.startswith(("http://", "https://", "databricks")):
        data["tracking"]["uri"] = None  # a local file/sqlite URI means nothing in a pod: use $MLFLOW_TRACKING_URI
    out = parse_config(data, source="cluster config")
    resolve(out)
    return out


@dataclass
class CompileOptions:
    rounds_per_run: int | None = None
    fan_out: bool = False
    max_tasks: int = 40
    image: str | None = None
    gpus: int | None = None  # None: the cluster file's, else 1
    methods: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    benchmark_name: str = "benchmark"
    parallelism: int = 4
    rounds_per_task: int = DEFAULT_ROUNDS_PER_TASK
    cluster_file: str | None = None
    step_settings: list[str] = field(default_factory=list)


def _settings(opts: CompileOptions) -> ClusterSettings:
    return load_cluster_settings(opts.cluster_file, opts.step_settings, opts.gpus)


def cost_of(cfg: ExperimentConfig, opts: CompileOptions, chain: bool = True) -> Cost:
    """Runs, tasks and pods the experiment costs with these options (printed by ``mmfl compile``)."""
    return experiment_cost(cfg, opts.rounds_per_task, opts.max_tasks, opts.fan_out, chain)


def _write(pipeline: Any, path: Path, image: str | None) -> Path:
    """Compile, then pin every executor to ``image`` (the component default is set at import time)."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    if image:
        docs = list(yaml.safe_load_all(path.read_text()))
        for executor in docs[0]["deploymentSpec"]["executors"].values():
            executor["container"]["image"] = image
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def compile_experiment(cfg: ExperimentConfig, path: Path, opts: CompileOptions | None = None) -> tuple[Path, int]:
    """Experiment pipeline YAML for ``cfg``; returns the path and the rounds one run covers."""
    opts = opts or CompileOptions()
    from pipelines.experiment import build_experiment_pipeline

    settings = _settings(opts)
    pipeline = build_experiment_pipeline(cluster_config(cfg, settings.gpus), rounds=opts.rounds_per_run,
                                         fan_out=opts.fan_out, settings=settings, max_tasks=opts.max_tasks,
                                         rounds_per_task=opts.rounds_per_task)
    return _write(pipeline, path, opts.image), pipeline.rounds_per_run


def benchmark_cells(cfg: ExperimentConfig, opts: CompileOptions) -> list[ExperimentConfig]:
    from mmfl.kfp.benchmark import benchmark_cells as cells

    return cells(cluster_config(cfg, _settings(opts).gpus), opts.methods or None, opts.rates or None, opts.seeds or None)


def compile_benchmark(cfg: ExperimentConfig, path: Path, opts: CompileOptions | None = None) -> tuple[Path, int]:
    """Benchmark pipeline YAML over the grid of ``opts``; returns the path and the number of cells."""
    opts = opts or CompileOptions()
    from pipelines.benchmark import build_benchmark_pipeline

    cells = benchmark_cells(cfg, opts)
    pipeline = build_benchmark_pipeline(cells, name=opts.benchmark_name, parallelism=opts.parallelism,
                                        settings=_settings(opts))
    return _write(pipeline, path, opts.image), len(cells)


def pipeline_arguments(cfg: ExperimentConfig, benchmark: bool, opts: CompileOptions, chain: bool = False,
                       pipeline_version: str = "") -> dict[str, Any]:
    """Run parameters that carry the config, so one compiled package serves many configs."""
    if benchmark:
        return {"cells_json": [json.dumps(c.model_dump(mode="json"), sort_keys=True) for c in benchmark_cells(cfg, opts)],
                "benchmark_name": opts.benchmark_name}
    args: dict[str, Any] = {"config_json": json.dumps(cluster_config(cfg, _settings(opts).gpus).model_dump(mode="json"),
                                                      sort_keys=True)}
    if chain:
        args["chain"] = True
    if pipeline_version:
        args["pipeline_version"] = pipeline_version
    return args


def check_cron(expr: str) -> str:
    """KFP uses 6-field cron (seconds first); a classic 5-field expression gets ``0`` seconds."""
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ConfigError(f"--cron = {expr!r}: expected 5 or 6 space-separated fields, e.g. '0 3 * * *'")
    return " ".join(fields)
