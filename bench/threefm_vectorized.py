"""One 3FM round: the vectorized engine (``mmfl/engine/vectorized/maml.py``) against the per-client loop.

Both sides train the same sampled clients from the same global model in the same process,
alternating, ``--repeats`` times; the table gives the median seconds per round, the ratio and the
largest difference between the two engines' client weights. The vectorized trainer is prepared
(model built, ``vmap`` probe) before the timed rounds, as it is once per experiment; its
preparation time is shown separately. A benchmark, not a test.

    python bench/threefm_vectorized.py                      # configs/mfeat.yaml, 10 clients, every variant
    python bench/threefm_vectorized.py --variants paper --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engines import alternate, max_update_diff  # noqa: E402
from mmfl.engine import steps  # noqa: E402
from mmfl.engine.vectorized import loop_train, train_clients, trainer_for  # noqa: E402
from mmfl.methods import load_experiment, resolve  # noqa: E402

VARIANTS = {
    "paper": [],  # sgd inner step, 1 step, the shard as one batch, support/query by presence
    "official": ["method.params.inner_optimizer=adam", "method.params.inner_steps=5", "train.engine=vectorized"],
    "minibatch": ["method.params.batching=minibatch"],
}


def aggregate_diff(cfg, state, loop, vec) -> float:
    a, b = steps.aggregate(cfg, state, loop).tensors, steps.aggregate(cfg, state, vec).tensors
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "mfeat.yaml")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="further config overrides, key=value")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    table = Table(title=f"3FM, one round: loop vs vectorized ({args.config.name}, {args.threads} thread(s), "
                        f"median of {args.repeats})")
    for col in ("variant", "clients", "meta-steps", "loop s", "vectorized s", "speed-up", "prepare s", "max |diff| clients", "max |diff| FedAvg"):
        table.add_column(col, justify="right" if col not in ("variant",) else "left")
    with tempfile.TemporaryDirectory() as root:
        for name in args.variants:
            cfg = load_experiment(args.config, ["method.name=threefm", "train.clients_per_round=1.0",
                                                "tracking.enabled=false", f"storage.root={root}",
                                                *VARIANTS[name], *args.set])
            data = steps.prepare_data(cfg)
            shards = dict(enumerate(data.clients))
            state = steps.init_state(cfg, data.spec)
            ids = steps.sample_clients(cfg, 1)
            method = resolve(cfg).method
            t0 = time.perf_counter()
            trainer = trainer_for(method, cfg, state, shards[ids[0]])
            prepare = time.perf_counter() - t0
            if trainer is None:
                console.print(f"[red]{name}: the vectorized engine falls back to the loop here; skipped")
                continue
            wall, _, out = alternate({"loop": lambda: loop_train(method, cfg, state, shards, ids),
                                      "vectorized": lambda: train_clients(trainer, cfg, state, shards, ids)},
                                     args.repeats)
            loop, vec = out["loop"], out["vectorized"]
            lo, ve = statistics.median(wall["loop"]), statistics.median(wall["vectorized"])
            meta_steps = int(sum(u.metrics["local_steps"] for u in loop))
            table.add_row(name, str(len(ids)), str(meta_steps), f"{lo:.2f}", f"{ve:.2f}", f"{lo / ve:.2f}x",
                          f"{prepare:.2f}", f"{max_update_diff(loop, vec):.1e}", f"{aggregate_diff(cfg, state, loop, vec):.1e}")
    console.print(table)


if __name__ == "__main__":
    main()
