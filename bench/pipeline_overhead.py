"""Per-task overhead of the experiment pipeline under kfp.local, against the local engine.

The same config runs three ways in one process tree, one after the other: ``mmfl run``'s engine
in process, the pipeline with one task per round step (K = 1) and the pipeline with all rounds in
one ``train_rounds`` task (K = rounds). Every pipeline task is a fresh Python process (imports,
config, store reads), as a pod would be, minus scheduling, image pulls and driver pods. Results
are identical in all three (checked), so the difference in wall time is orchestration:

    overhead per task = (wall time of the K = 1 pipeline - local engine) / tasks it started

Usage: PYTHONPATH=. python -m bench.kfp_overhead [--config configs/quickstart.yaml] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mmfl.io.layout import load_round
from mmfl.io.store import LocalStore
from mmfl.local import run_experiment
from mmfl.methods import load_experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--method", default="fedavg")
    args = ap.parse_args()

    from kfp import local

    from pipelines.cluster import ClusterSettings
    from pipelines.experiment import build_experiment_pipeline
    from pipelines.segments import steps_per_round

    root = Path(tempfile.mkdtemp(prefix="kfp-overhead-"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])
    sets = [f"method.name={args.method}", f"train.rounds={args.rounds}", "tracking.enabled=false", "train.threads=1"]
    results = {}
    for label in ("local", "K=1", f"K={args.rounds}"):
        cfg = load_experiment(args.config, sets + [f"storage.root={root / label}"])
        t0 = time.perf_counter()
        if label == "local":
            run_experiment(cfg, progress=False)
            tasks = 0
        else:
            k = int(label[2:])
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / f"kfp-{label}"))
            build_experiment_pipeline(cfg, rounds_per_task=k, settings=ClusterSettings(gpus=0))(
                config_json=json.dumps(cfg.model_dump(mode="json")))
            tasks = 1 + (args.rounds * steps_per_round(cfg) if k == 1 else 1)
        wall = time.perf_counter() - t0
        _, metrics = load_round(LocalStore(root / label), cfg.experiment_id(), args.rounds)
        results[label] = {"wall_s": round(wall, 1), "tasks": tasks, "final": metrics["eval"]}
        print(label, results[label]["wall_s"], "s", tasks, "tasks", flush=True)
    same = len({json.dumps(r["final"], sort_keys=True) for r in results.values()}) == 1
    base = results["local"]["wall_s"]
    k1 = results["K=1"]
    print(json.dumps({"results": results, "identical_final_metrics": same,
                      "overhead_per_task_s": round((k1["wall_s"] - base) / k1["tasks"], 1)}, indent=1))


if __name__ == "__main__":
    main()
