"""``mmfl compile | submit | schedule``: the Kubeflow commands, registered on the main parser through
the ``mmfl.commands`` entry point (pyproject.toml)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

console = Console()


def _options(args: argparse.Namespace):
    from pipelines.compile import CompileOptions
    from pipelines.segments import DEFAULT_ROUNDS_PER_TASK

    return CompileOptions(rounds_per_run=args.rounds_per_run, fan_out=args.fan_out, max_tasks=args.max_tasks,
                          image=args.image, gpus=args.gpus, methods=args.method or [], rates=args.rate or [],
                          seeds=args.seed or [], benchmark_name=args.benchmark_name, parallelism=args.parallelism,
                          rounds_per_task=args.rounds_per_task or DEFAULT_ROUNDS_PER_TASK, cluster_file=args.cluster,
                          step_settings=list(args.step or []))


def _config(args: argparse.Namespace):
    from mmfl.methods import load_experiment

    return load_experiment(args.config, list(args.set or []))


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_benchmark, compile_experiment, cost_of

    cfg, opts, out = _config(args), _options(args), Path(args.out)
    path, rounds = compile_experiment(cfg, out / "experiment.yaml", opts)
    console.print(f"wrote {path}  ({rounds} of {cfg.train.rounds} rounds per run, {opts.rounds_per_task} per task)")
    console.print(f"experiment {cfg.experiment_id()} ({cfg.train.rounds} rounds, chained): {cost_of(cfg, opts).line()}")
    path, cells = compile_benchmark(cfg, out / "benchmark.yaml", opts)
    console.print(f"wrote {path}  ({cells} benchmark cells)")
    return 0


def _grid_only_with_benchmark(args: argparse.Namespace, benchmark: bool, flag: str) -> None:
    """--method/--rate/--seed describe the benchmark grid; on an experiment run they would be ignored."""
    from mmfl.errors import ConfigError

    given = [name for name, value in (("--method", args.method), ("--rate", args.rate), ("--seed", args.seed)) if value]
    if given and not benchmark:
        raise ConfigError(f"{', '.join(given)} set the benchmark grid and would be ignored by the experiment pipeline: "
                          f"{flag}, or set the experiment's own values with --set method.name=..., "
                          "--set missing.rate=..., --set seed=...")


def _version(args: argparse.Namespace):
    """--pipeline-id/--version-id (as printed by ``mmfl upload``): run that stored version."""
    from mmfl.errors import ConfigError
    from pipelines.submit import PipelineVersion

    if not args.pipeline_id and not args.version_id:
        return None
    if not (args.pipeline_id and args.version_id):
        raise ConfigError("--pipeline-id and --version-id go together (both are printed by `mmfl upload`)")
    return PipelineVersion(args.pipeline_id, args.version_id, args.version_label or args.version_id)


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.submit import submit

    _grid_only_with_benchmark(args, args.benchmark, "add --benchmark to submit the grid")
    done = submit(_config(args), args.host, experiment=args.experiment, opts=_options(args), benchmark=args.benchmark,
                  chain=args.chain, namespace=args.namespace, version=_version(args), log=console.print)
    console.print(f"KFP experiment {done.experiment_id}: runs {', '.join(done.run_ids) or 'none'}")
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from pipelines.submit import upload

    _grid_only_with_benchmark(args, args.benchmark, "add --benchmark to upload the grid")
    v = upload(_config(args), args.host, args.name, args.version, opts=_options(args), benchmark=args.benchmark,
               namespace=args.namespace)
    console.print(f"pipeline {args.name}: version {v.name}  --pipeline-id {v.pipeline_id} --version-id {v.version_id}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from pipelines.submit import schedule

    _grid_only_with_benchmark(args, not args.experiment_pipeline, "drop --experiment-pipeline to schedule the grid")
    job = schedule(_config(args), args.host, args.cron, name=args.name, experiment=args.experiment,
                   opts=_options(args), benchmark=not args.experiment_pipeline, namespace=args.namespace,
                   version=_version(args))
    console.print(f"recurring run {getattr(job, 'recurring_run_id', None)} ({args.cron})")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field")
    p.add_argument("--rounds-per-run", type=int, help="rounds unrolled in one run (default: fit --max-tasks)")
    p.add_argument("--max-tasks", type=int, default=40, help="task budget of one run (Argo/etcd size limit)")
    p.add_argument("--fan-out", action="store_true", help="one task per sampled client instead of one per round")
    p.add_argument("--image", help="container image of every step (default $MMFL_IMAGE or the release image)")
    p.add_argument("--gpus", type=int, help="GPUs per GPU task: 1 (default) or 0 = CPU nodes only")
    p.add_argument("--rounds-per-task", type=int,
                   help="K rounds trained in one task (1 = one task per round step; default in docs/kubeflow.md)")
    p.add_argument("--cluster", metavar="FILE", help="YAML of cluster settings (resources, placement, timeouts per step)")
    p.add_argument("--step", action="append", metavar="STEP.FIELD=VALUE",
                   help="per-step setting, e.g. client_train.memory_limit=32G, cpu.timeout_s=600 (repeatable)")
    p.add_argument("--method", action="append", help="benchmark grid: method (repeatable)")
    p.add_argument("--rate", action="append", type=float, help="benchmark grid: training missing rate (repeatable)")
    p.add_argument("--seed", action="append", type=int, help="benchmark grid: seed (repeatable)")
    p.add_argument("--benchmark-name", default="benchmark")
    p.add_argument("--parallelism", type=int, default=4, help="benchmark cells running at once")


def register_kfp_commands(sub: argparse._SubParsersAction) -> None:
    comp = sub.add_parser("compile", allow_abbrev=False, help="compile the experiment and benchmark pipelines to KFP v2 YAML")
    _common(comp)
    comp.add_argument("--out", default="build/pipelines", help="output folder")
    comp.set_defaults(func=cmd_compile)

    subm = sub.add_parser("submit", allow_abbrev=False, help="submit an experiment (or benchmark) run to Kubeflow Pipelines")
    _common(subm)
    subm.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8080")
    subm.add_argument("--experiment", default="mmfl", help="KFP experiment name")
    subm.add_argument("--namespace", help="profile namespace (multi-user Kubeflow)")
    subm.add_argument("--benchmark", action="store_true", help="submit the benchmark grid instead")
    subm.add_argument("--chain", action="store_true",
                      help="each run submits the next segment itself (server-side) until the experiment is done")
    _version_args(subm)
    subm.set_defaults(func=cmd_submit)

    upl = sub.add_parser("upload", allow_abbrev=False, help="upload the compiled pipeline to Kubeflow as a pipeline version")
    _common(upl)
    upl.add_argument("--host", required=True, help="KFP API URL")
    upl.add_argument("--name", default="mmfl-experiment", help="KFP pipeline name (created on first upload)")
    upl.add_argument("--version", required=True, help="version name, e.g. the image tag or a date")
    upl.add_argument("--namespace")
    upl.add_argument("--benchmark", action="store_true", help="upload the benchmark pipeline instead")
    upl.set_defaults(func=cmd_upload)

    sch = sub.add_parser("schedule", allow_abbrev=False, help="create a recurring benchmark run (cron)")
    _common(sch)
    sch.add_argument("--host", required=True, help="KFP API URL")
    sch.add_argument("--cron", required=True, help="cron expression, 5 fields or KFP's 6 (seconds first)")
    sch.add_argument("--name", help="recurring run name")
    sch.add_argument("--experiment", default="mmfl-benchmarks", help="KFP experiment name")
    sch.add_argument("--namespace")
    sch.add_argument("--experiment-pipeline", action="store_true", help="schedule the experiment pipeline instead")
    _version_args(sch)
    sch.set_defaults(func=cmd_schedule)


def _version_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline-id", help="run an uploaded pipeline version (see `mmfl upload`) instead of an inline spec")
    p.add_argument("--version-id", help="the uploaded version's id")
    p.add_argument("--version-label", help="name of that version for the MLflow tag kfp.pipeline_version")
