"""FED-PRIME vs FedAvg-prompts as the training missing rate grows (benchmark, not a test).

Data: ``mfeat_text`` = the real mfeat digit image (16x15 pixel view) paired with a SYNTHETIC
text view: a sentence rendered from another mfeat view (morphological features, quantised into
words) and embedded by the offline all-MiniLM-L6-v2 model. It is derived from the data, not
natural language. Backbone: a small ViLT with RANDOM frozen weights (no pretrained ViLT is
available offline); both methods share it, the prompt length and the head, and differ only in
pools + retrieval + clustering alignment (FED-PRIME) vs one averaged prompt set (FedAvg-prompts).

    PYTHONPATH=. python bench/fedprime_missing.py [--rates 0 0.3 0.6 0.9] [--rounds 6]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402


from mmfl.local import run_experiment  # noqa: E402
from mmfl.methods import parse_experiment

METHODS = {"fedprime": "FED-PRIME", "fedavg_prompts": "FedAvg-P"}


def config(method: str, rate: float, args, root: str) -> dict:
    backbone = {"hidden": args.hidden, "layers": args.layers, "heads": 4, "intermediate": 2 * args.hidden,
                "image_size": 16, "patch_size": 8, "max_text_len": 8, "init_range": args.init_range}
    return {
        "name": "bench-fedprime",
        "seed": args.seed,
        "data": {"name": "mfeat_text", "image_text": {"text_view": "mor", "max_per_class": args.per_class}},
        "partition": {"scheme": "dirichlet", "num_clients": args.clients, "alpha": 1.0},
        "missing": {"pattern": "mixed", "rate": rate, "client_rate_spread": min(rate, 1 - rate, args.spread)},
        "method": {"name": method, "params": {"backbone": backbone, "pool_size": args.pool, "top_k": 2,
                                              "prompt_length": 4, "feature_cache": "memory"}},
        "train": {"rounds": args.rounds, "local_epochs": 1, "batch_size": 32, "lr": args.lr, "weight_decay": 0.0},
        "eval": {"every": args.rounds},
        "storage": {"kind": "local", "root": root},
        "tracking": {"enabled": False},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.9])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--pool", type=int, default=6)
    ap.add_argument("--spread", type=float, default=0.2, help="per-client missing rate = rate +- spread")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--init-range", type=float, default=0.1, help="std of the random ViLT init")
    ap.add_argument("--per-class", type=int, default=120, help="mfeat samples kept per class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 avoids spin contention on small shared machines")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("mmfl").setLevel(logging.WARNING)
    console = Console(width=200)
    rows: dict[float, dict[str, dict]] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as root, Progress(console=console) as bar:
        task = bar.add_task("runs", total=len(args.rates) * len(METHODS))
        for rate in args.rates:
            rows[rate] = {}
            for method in METHODS:
                cfg = parse_experiment(config(method, rate, args, root))
                start = time.time()
                res = run_experiment(cfg, progress=False)
                rows[rate][method] = {**{p: v["acc"] for p, v in res.final.items()}, "sec": time.time() - start}
                bar.advance(task)
    table = Table(title=f"mfeat image + synthetic MiniLM text, random-init ViLT (h={args.hidden}), "
                        f"{args.clients} clients, {args.rounds} rounds; test accuracy")
    table.add_column("train missing rate", justify="right")
    for m in METHODS.values():
        for p in ("full", "only:image", "only:text"):
            table.add_column(f"{m} {p}", justify="right")
    table.add_column("FED-PRIME / FedAvg-P (full)", justify="right")
    for rate, res in rows.items():
        cells = [f"{rate:.1f}"]
        for m in METHODS:
            cells += [f"{res[m][p]:.3f}" for p in ("full", "only:image", "only:text")]
        cells.append(f"{res['fedprime']['full'] / max(res['fedavg_prompts']['full'], 1e-9):.2f}")
        table.add_row(*cells)
    console.print(table)
    console.print(f"total {time.time() - t0:.0f}s; command: PYTHONPATH=. python bench/fedprime_missing.py "
                  f"--rates {' '.join(map(str, args.rates))} --rounds {args.rounds} --clients {args.clients} "
                  f"--hidden {args.hidden} --layers {args.layers} --pool {args.pool} --lr {args.lr} --seed {args.seed} "
                  f"--init-range {args.init_range} --per-class {args.per_class}")


if __name__ == "__main__":
    main()
