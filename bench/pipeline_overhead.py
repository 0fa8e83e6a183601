"""Pipeline overhead: per-round time of the experiment pipeline under kfp.local against the local engine.

The same small config runs three ways in one process tree, one after the other: the local engine
(``mmfl.local.run_experiment``, in process), the experiment pipeline with one task per round step
(``--rounds-per-task 1``) and the pipeline with the default rounds per task
(``pipelines.segments.DEFAULT_ROUNDS_PER_TASK``, 25: every round of a short run in one
``train_rounds`` task). Every pipeline task is a fresh Python process (``kfp.local``'s
``SubprocessRunner``: imports, config, store reads), as a pod would be, minus scheduling, image
pulls and driver pods. The final test metrics of the three must be identical (checked), so the
difference in time is orchestration. Per run:

- *wall per round*: the whole run (data preparation and task start-up included) / rounds;
- *steady per round*: between the completion of round 1 and of the last round (the mtimes of the
  rounds' ``metrics.json``, written last), / (rounds - 1): what one more round costs;
- *overhead per task*: (wall - the local engine's wall) / tasks started.

Usage: PYTHONPATH=. python -m bench.pipeline_overhead [--config configs/quickstart.yaml] [--rounds 5]
       [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from mmfl.io.layout import load_round, round_prefix
from mmfl.io.store import LocalStore
from mmfl.local import run_experiment
from mmfl.methods import load_experiment

BEGIN, END = "<!-- bench:pipeline:begin -->", "<!-- bench:pipeline:end -->"


def round_times(root: Path, exp_id: str, rounds: int) -> list[float]:
    """When each round completed: the mtime of its ``metrics.json`` (written last)."""
    return [(root / f"{round_prefix(exp_id, r)}/metrics.json").stat().st_mtime for r in range(1, rounds + 1)]


def measure(args) -> dict[str, dict]:
    from kfp import local

    from pipelines.cluster import ClusterSettings
    from pipelines.experiment import build_experiment_pipeline
    from pipelines.segments import DEFAULT_ROUNDS_PER_TASK, steps_per_round

    root = Path(tempfile.mkdtemp(prefix="pipeline-overhead-"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])
    sets = [f"method.name={args.method}", f"train.rounds={args.rounds}", "tracking.enabled=false", "train.threads=1"]
    results: dict[str, dict] = {}
    for k in (None, 1, DEFAULT_ROUNDS_PER_TASK):
        label = "local" if k is None else f"K={k}"
        cfg = load_experiment(args.config, sets + [f"storage.root={root / label}"])
        print(f"{label}: running {args.rounds} rounds ...", flush=True)
        t0 = time.perf_counter()
        if k is None:
            run_experiment(cfg, progress=False)
            tasks = 0
        else:
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / f"kfp-{label}"))
            build_experiment_pipeline(cfg, rounds_per_task=k, settings=ClusterSettings(gpus=0))(
                config_json=json.dumps(cfg.model_dump(mode="json")))
            per_task = -(-args.rounds // k)  # train_rounds tasks (K > 1) or rounds (K = 1)
            tasks = 1 + (args.rounds * steps_per_round(cfg) if k == 1 else per_task)
        wall = time.perf_counter() - t0
        done = round_times(root / label, cfg.experiment_id(), args.rounds)
        _, metrics = load_round(LocalStore(root / label), cfg.experiment_id(), args.rounds)
        results[label] = {"k": k, "wall_s": wall, "tasks": tasks, "final": metrics["eval"],
                          "steady_s": (done[-1] - done[0]) / (args.rounds - 1)}
        print(f"{label}: {wall:.1f} s, {tasks} tasks", flush=True)
    return results


def table(results: dict[str, dict], rounds: int) -> str:
    base = results["local"]
    reference = json.dumps(base["final"], sort_keys=True)
    lines = ["| run | rounds per task | tasks | wall (s) | wall per round (s) | vs local | steady per round (s) "
             "| vs local | overhead per task (s) | final test metrics |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        name = "local engine (in process)" if r["k"] is None else f"kfp.local pipeline, K = {r['k']}"
        overhead = "-" if not r["tasks"] else f"{(r['wall_s'] - base['wall_s']) / r['tasks']:.1f}"
        same = "reference" if r is base else (
            "identical" if json.dumps(r["final"], sort_keys=True) == reference else "DIFFERENT")
        lines.append(f"| {name} | {'-' if r['k'] is None else r['k']} | {r['tasks'] or '-'} | {r['wall_s']:.1f} "
                     f"| {r['wall_s'] / rounds:.2f} | {r['wall_s'] / base['wall_s']:.1f}x | {r['steady_s']:.2f} "
                     f"| {r['steady_s'] / base['steady_s']:.1f}x | {overhead} | {same} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--rounds", type=int, default=5, help="at least 2 (the steady time is between rounds)")
    ap.add_argument("--method", default="fedavg")
    ap.add_argument("--out", help="write the table into this Markdown file (section between markers)")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        print(f"error: --rounds = {args.rounds}: at least 2 (the steady time per round is measured between rounds)",
              file=sys.stderr)
        return 2
    from bench.vectorized import machine, replace_section

    started = machine()  # the load average before the runs
    results = measure(args)
    text = table(results, args.rounds)
    print(text)
    if args.out:
        command = " ".join(["python -m bench.pipeline_overhead", *(argv if argv is not None else sys.argv[1:])])
        replace_section(Path(args.out), BEGIN, END, "\n".join([
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {started}.",
            f"Command: `{command}`; {args.config}, {args.method}, {args.rounds} rounds, `train.threads=1`, "
            "tracking off; the three runs one after the other.", "", text]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
