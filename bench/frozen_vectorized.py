"""One round of FED-PRIME, FedAvg-P and FedMVP-lite: the vectorized engine vs the per-client loop
(benchmark, not a test).

Both engines train the same sampled clients from the same global state in one process, the frozen
features already cached (the first, untimed round fills the cache; both engines then read it).
Each engine's round is timed ``--repeats`` times, alternating; the table gives the median wall time
(and CPU time of the process), the ratio loop / vectorized of the medians and of the fastest
repeats (the least disturbed on a shared machine), and the largest difference between the two
engines' client weights.

Setting (small, CPU): ``mfeat_text`` (the mfeat digit image with a MiniLM-embedded text view),
Dirichlet(``--alpha`` 1.0) label skew over ``--clients`` clients (unequal sizes; ``--alpha 0``: IID,
equal sizes), missing both at 0.5, one local
epoch, batch 16, a random ViLT / CLIP of hidden 64 and 2 layers, the methods' default pools and
optimisers (FED-PRIME: pools of 20, top-k 5, SGD; FedMVP: AdamW, joint width 64).

    PYTHONPATH=. python bench/frozen_vectorized.py [--clients 10] [--alpha 1.0] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.engines import alternate, max_update_diff  # noqa: E402
from mmfl.engine import steps  # noqa: E402
from mmfl.methods import parse_experiment  # noqa: E402

BACKBONE = {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128, "image_size": 16, "patch_size": 8,
            "max_text_len": 8}
METHODS = {
    "fedprime": ("FED-PRIME", {"backbone": BACKBONE, "feature_cache": "memory"}),
    "fedavg_p": ("FedAvg-P", {"backbone": BACKBONE, "feature_cache": "memory"}),
    "fedmvp": ("FedMVP-lite", {"backbone": BACKBONE, "feature_cache": "memory", "completion": "feature"}),
}


def config(method: str, engine: str, args, root: str):
    return parse_experiment({
        "name": "bench-frozen-vectorized",
        "seed": 0,
        "data": {"name": "mfeat_text", "image_text": {"text_view": "mor", "max_per_class": args.per_class}},
        "partition": ({"scheme": "iid", "num_clients": args.clients} if args.alpha <= 0 else
                      {"scheme": "dirichlet", "alpha": args.alpha, "num_clients": args.clients, "min_client_size": 8}),
        "missing": {"pattern": "mixed", "rate": 0.5},
        "method": {"name": method, "params": METHODS[method][1]},
        "train": {"rounds": 1, "local_epochs": 1, "batch_size": 16, "lr": 0.05, "engine": engine,
                  "vector_chunk": args.clients},
        "storage": {"kind": "local", "root": root},
        "tracking": {"enabled": False},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet label skew (unequal clients); 0: IID")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (with 2 on a shared 2-core machine a busy neighbour stalls every parallel region)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = Table(title=f"one round, {args.clients} clients, {args.threads} torch threads (median of {args.repeats})")
    for col in ("method", "samples per client", "grid fill", "loop s (cpu s)", "vectorized s (cpu s)",
                "loop / vectorized (cpu)", "fastest: loop / vectorized", "max |diff|"):
        table.add_column(col)
    with tempfile.TemporaryDirectory() as root:
        for method in args.methods:
            loop, vec = config(method, "loop", args, root), config(method, "vectorized", args, root)
            data = steps.prepare_data(loop)
            state = steps.init_state(loop, data.spec)
            shards = dict(enumerate(data.clients))
            ids = list(shards)
            steps.client_train(loop, state, shards, ids)  # fills the feature cache
            times, cpu, results = alternate(
                {name: lambda cfg=cfg: steps.client_train(cfg, state, shards, ids)
                 for name, cfg in (("loop", loop), ("vectorized", vec))}, args.repeats)
            diff = max_update_diff(results["loop"], results["vectorized"])
            t_loop, t_vec = statistics.median(times["loop"]), statistics.median(times["vectorized"])
            c_loop, c_vec = statistics.median(cpu["loop"]), statistics.median(cpu["vectorized"])
            sizes = sorted(len(s) for s in data.clients)
            # Real batches over the padded (steps x clients) grid of one chunk: the rest is padding.
            fill = sum(-(-n // 16) for n in sizes) / (len(sizes) * -(-sizes[-1] // 16))
            table.add_row(METHODS[method][0], f"{sizes[0]}-{sizes[-1]}", f"{fill:.2f}", f"{t_loop:.2f} ({c_loop:.2f})",
                          f"{t_vec:.2f} ({c_vec:.2f})", f"{t_loop / t_vec:.2f}x ({c_loop / c_vec:.2f}x)",
                          f"{min(times['loop']) / min(times['vectorized']):.2f}x", f"{diff:.1e}")
    Console().print(table)


if __name__ == "__main__":
    main()
