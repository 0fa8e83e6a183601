"""One round of FlexMod's (or Partial Update's) clients: the vectorized engine vs the per-client loop.

    PYTHONPATH=. python -m bench.flexmod_engine [--method flexmod] [--repeats 5] [--threads 1] [--json out.json]

Both engines run in this one process on the same round (configs/mfeat.yaml: 10 clients, every
one sampled), alternately, after one warm-up call each (the vectorized engine prepares its trainer
on its first call); the table gives the median (and the fastest) seconds of the clients' work (local training plus
what each client reports: FlexMod's validation accuracies of every modality coalition) and the
ratio, in wall time and in the process's CPU time (steadier on a shared machine; it adds
up the time of every thread). The two engines' trained weights are compared as a check (they agree within 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from bench.engines import alternate, max_update_diff
from mmfl.engine import steps, vectorized
from mmfl.methods import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def measure(method: str, repeats: int, threads: int, config: Path) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_experiment(config, [f"method.name={method}", f"storage.root={tmp}", "tracking.enabled=false",
                                       "train.clients_per_round=1.0"])
        data = steps.prepare_data(cfg)
        shards = dict(enumerate(data.clients))
        state = steps.init_state(cfg, data.spec)
        ids = steps.sample_clients(cfg, 1)
        m = steps.method_of(cfg)
        engines = {"loop": lambda: vectorized.loop_train(m, cfg, state, shards, ids),
                   "vectorized": lambda: vectorized.client_train_vectorized(cfg, state, shards, ids, method=m)}
        first_s, _, out = alternate(engines, 1)  # the first call of each (the vectorized trainer's preparation)
        first = {k: v[0] for k, v in first_s.items()}
        times, cpu, _ = alternate(engines, repeats)
        diff = max_update_diff(out["loop"], out["vectorized"])
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        best = {k: min(v) for k, v in times.items()}
        return {"method": method, "clients": len(ids), "samples": [len(shards[c]) for c in ids],
                "threads": threads, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "first_call_s": first, "round_s": times, "median_s": med,
                "cpu_s": cpu, "median_cpu_s": med_cpu, "min_s": best,
                "min_ratio_loop_over_vectorized": best["loop"] / best["vectorized"], "ratio_loop_over_vectorized": med["loop"] / med["vectorized"],
                "cpu_ratio_loop_over_vectorized": med_cpu["loop"] / med_cpu["vectorized"], "max_weight_diff": diff,
                "trainer": type(vectorized.trainer_for(m, cfg, state, shards[ids[0]])).__name__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="flexmod", choices=["flexmod", "partial_update", "fedavg"],
                    help="fedavg: the same round of the plain FedAvg trainer, for reference")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "mfeat.yaml")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    r = measure(args.method, args.repeats, args.threads, args.config)
    print(f"{r['method']}: {r['clients']} clients ({min(r['samples'])}-{max(r['samples'])} samples), "
          f"{r['threads']} threads")
    print(f"{'engine':<12}{'first call (s)':>16}{'median wall (s)':>17}{'min wall (s)':>14}{'median CPU (s)':>16}")
    for k in ("loop", "vectorized"):
        print(f"{k:<12}{r['first_call_s'][k]:>16.3f}{r['median_s'][k]:>17.3f}{r['min_s'][k]:>14.3f}"
              f"{r['median_cpu_s'][k]:>16.3f}")
    print(f"loop / vectorized: wall {r['ratio_loop_over_vectorized']:.2f}x (median), {r['min_ratio_loop_over_vectorized']:.2f}x "
          f"(min), CPU {r['cpu_ratio_loop_over_vectorized']:.2f}x; "
          f"max weight difference {r['max_weight_diff']:.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
