"""Cross-device workload: 1,000 / 10,000 / 100,000 clients, a few sampled per round.

    PYTHONPATH=. python -m bench.cross_device [--populations 1000 10000 100000] [--rounds 3]

The model, the shard generator and FedAvg are those of workload W (``bench/workloads.py``); the
population's shards are a ``mmfl.data.ClientShards`` whose factory generates client k's samples
from (seed, k) when a round samples it, so no per-client object exists for idle clients and the
global model is the only state. Each population runs in its own subprocess (clean peak RSS) with
the default engine (``train.engine: auto``, vectorized for FedAvg): 1% sampled per round, and a
fixed sampled count (that of 1% of the smallest population) to compare populations at equal work.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.workloads import WORKLOADS, WorkloadMethod, class_means, initial_state, make_config, make_shard


def worker(population: int, sampled: int, rounds: int) -> dict:
    import numpy as np

    from mmfl.data import ClientShards
    from mmfl.engine import steps

    torch.set_num_threads(1)
    w = type(WORKLOADS["W"])(**{**WORKLOADS["W"].__dict__, "clients": population})
    # At most one round's shards are kept; an idle client has no object.
    means = class_means(w)
    shards = ClientShards(population, lambda k: make_shard(w, k, means), np.full(population, w.samples), keep=sampled)
    cfg = make_config(w, engine="auto")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"clients_per_round": sampled / population})})
    method, state = WorkloadMethod(w), initial_state(w)
    from mmfl.data.dataset import DataSpec
    from mmfl.engine.vectorized import client_train_vectorized
    from mmfl.methods.base import Context

    times = []
    for r in range(1, rounds + 2):  # round 1 is warm-up
        t0 = time.perf_counter()
        ids = steps.sample_clients(cfg, r)
        updates = client_train_vectorized(cfg, state, shards, ids, method=method)
        state = method.aggregate(state, updates, Context(cfg, DataSpec.from_json(state.meta["data_spec"]), r))
        times.append(time.perf_counter() - t0)
    assert len(ids) == sampled and len(shards.materialized) <= sampled * (rounds + 1)
    data_mb = population * w.samples * (sum(w.dims) * 4 + 8 + len(w.dims)) / 2**20
    return {"population": population, "sampled": sampled, "s_round": statistics.median(times[1:]),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "data_mb": data_mb,
            "touched": len(shards.materialized)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--populations", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", type=int, nargs=2, metavar=("POPULATION", "SAMPLED"))
    p.add_argument("--out", help="write the table into this Markdown file (section between markers)")
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.rounds)), flush=True)
        return 0
    fixed = max(1, round(args.fraction * min(args.populations)))
    runs = sorted({(n, max(1, round(args.fraction * n))) for n in args.populations} | {(n, fixed) for n in args.populations})
    rows = []
    for n, k in runs:
        cmd = [sys.executable, "-m", "bench.cross_device", "--worker", str(n), str(k), "--rounds", str(args.rounds)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(f"{n} clients, {k} sampled: failed: {out.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        rows.append(json.loads(line[0][7:]))
        print(f"{n} clients, {k} sampled: {rows[-1]['s_round']:.3f} s/round", flush=True)
    base = {r["sampled"]: r for r in rows if r["population"] == min(args.populations)}
    lines = ["| population | sampled/round | s/round | s/round vs the smallest population, same sampled "
             "| peak RSS MB | population's data MB (never held) | shards built (all rounds) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(r["sampled"])
        ratio = f"{r['s_round'] / b['s_round']:.2f}x" if b else "-"
        lines.append(f"| {r['population']:,} | {r['sampled']:,} | {r['s_round']:.3f} | {ratio} | {r['peak_mb']:.0f} "
                     f"| {r['data_mb']:,.0f} | {r['touched']:,} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        from bench.vectorized import machine, replace_section

        command = " ".join(["python -m bench.cross_device", *(argv or sys.argv[1:])])
        replace_section(Path(args.out), BEGIN, END, "\n".join([
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}.",
            f"Command: `{command}`; {args.rounds} measured rounds after one warm-up round, median.", "", text]))
    return 0


BEGIN, END = "<!-- bench:cross-device:begin -->", "<!-- bench:cross-device:end -->"


if __name__ == "__main__":
    sys.exit(main())
