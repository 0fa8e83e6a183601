"""FED-PRIME vs FedAvg-P with the official defaults, scaled down for a small machine (benchmark, not a test).

The paper's grid: three training settings with missing rate 0.7 (text missing, image missing, both
missing = half of the incomplete samples lack the image, half the text) and five test settings
(Test(~Train), Test(Miss-Both@0.7), full, text only, image only); 20 IID clients with the same
missing rate each, full participation, one local epoch, SGD.

Official defaults kept: pools of 20 one-token prompts, top-k 5, retrieval weight 0.01, 5 outer
loops of the matching, SGD lr 0.05 (the Food-101 value), FedAvg-P with 16 prompt tokens per
prompted layer (the tiny backbone has 2 layers, so layers 0-1 instead of 0-5), 20 clients.
Scaled down: ``--rounds`` (default 30 instead of 250), batch 16 instead of 64 (so that a client's
40-odd samples still give several steps per round), a random-init ViLT with hidden 64 and 2 layers
(no pretrained ViLT is available offline), and ``mfeat_text`` (the mfeat digit image with a
synthetic MiniLM-embedded text view) instead of Food-101 / MM-IMDB.

    PYTHONPATH=. python bench/fedprime_vs_fedavg_p.py [--rounds 30] [--seeds 0 1] [--plot runs/bench/fedprime.png]
"""

from __future__ import annotations

import argparse
import json
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

from mmfl.io.store import LocalStore  # noqa: E402
from mmfl.local import run_experiment  # noqa: E402
from mmfl.methods import parse_experiment  # noqa: E402

METHODS = {"fedprime": "FED-PRIME", "fedavg_p": "FedAvg-P"}
SETTINGS = {"missing:text": "Miss Text", "missing:image": "Miss Image", "mixed": "Miss Both"}


def patterns(rate: float) -> list[str]:
    return ["~train", f"mixed@{rate}", "full", "only:text", "only:image"]


def config(method: str, setting: str, seed: int, args, root: str) -> dict:
    backbone = {"hidden": args.hidden, "layers": args.layers, "heads": 4, "intermediate": 2 * args.hidden,
                "image_size": 16, "patch_size": 8, "max_text_len": 8, "init_range": args.init_range}
    params = {"backbone": backbone, "feature_cache": "memory"}  # everything else: the official defaults
    return {
        "name": "bench-fedprime",
        "seed": seed,
        "data": {"name": "mfeat_text", "image_text": {"text_view": "mor", "max_per_class": args.per_class}},
        "partition": {"scheme": "iid", "num_clients": args.clients},
        "missing": {"pattern": setting, "rate": args.rate},
        "method": {"name": method, "params": params},
        "train": {"rounds": args.rounds, "local_epochs": 1, "batch_size": args.batch, "lr": args.lr,
                  "momentum": 0.0, "weight_decay": 0.0},
        "eval": {"every": args.rounds, "patterns": patterns(args.rate)},
        "storage": {"kind": "local", "root": root},
        "tracking": {"enabled": False},
    }


def plot(rows: dict, args, path: str) -> None:
    """Bars of mean test accuracy per test setting, one panel per training setting."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    pats = patterns(args.rate)
    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.6), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, setting in zip(axes, rows):
        for j, method in enumerate(rows[setting]):
            vals = [sum(r[p] for r in rows[setting][method]) / len(rows[setting][method]) for p in pats]
            ax.bar([i + 0.4 * j for i in range(len(pats))], vals, width=0.4, label=METHODS[method])
        ax.set_xticks([i + 0.2 for i in range(len(pats))], pats, rotation=30)
        ax.set_title(f"train: {SETTINGS[setting]} @{args.rate}")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--rate", type=float, default=0.7, help="missing rate in training and in Miss-Both tests")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--init-range", type=float, default=0.1, help="std of the random ViLT init")
    ap.add_argument("--per-class", type=int, default=120, help="mfeat samples kept per class")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 avoids spin contention on shared machines")
    ap.add_argument("--plot", help="write a bar chart (PNG) here")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("mmfl").setLevel(logging.WARNING)
    console = Console(width=220)
    settings = {s: SETTINGS[s] for s in args.settings}
    methods = {m: METHODS[m] for m in args.methods}
    rows: dict[str, dict[str, list[dict]]] = {s: {m: [] for m in methods} for s in settings}
    pools: dict[str, list[list[int]]] = {s: [] for s in settings}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as root, Progress(console=console) as bar:
        task = bar.add_task("runs", total=len(settings) * len(methods) * len(args.seeds))
        for setting in settings:
            for seed in args.seeds:
                for method in methods:
                    cfg = parse_experiment(config(method, setting, seed, args, root))
                    start = time.time()
                    res = run_experiment(cfg, progress=False)
                    row = {p: v["acc"] for p, v in res.final.items()}
                    row["sec"] = time.time() - start
                    rows[setting][method].append(row)
                    if method == "fedprime":
                        state = LocalStore(root).get_state(f"{cfg.experiment_id()}/rounds/{args.rounds:05d}")
                        pools[setting].append(state.meta["inter_pool_sizes"])
                    bar.advance(task)
    pats = patterns(args.rate)
    table = Table(title=f"mfeat image + synthetic MiniLM text, random-init ViLT (h={args.hidden}), {args.clients} "
                        f"clients, {args.rounds} rounds, seeds {args.seeds}: test accuracy (mean over seeds)")
    table.add_column("train setting")
    table.add_column("method")
    for p in pats:
        table.add_column(p, justify="right")
    table.add_column("sec/run", justify="right")
    for setting, name in settings.items():
        for method, label in methods.items():
            runs = rows[setting][method]
            mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
            table.add_row(f"{name} @{args.rate}", label, *[f"{mean[p]:.3f}" for p in pats], f"{mean['sec']:.0f}")
        if len(methods) == 2:
            ratio = [sum(r[p] for r in rows[setting]["fedprime"]) / max(sum(r[p] for r in rows[setting]["fedavg_p"]), 1e-9)
                     for p in pats]
            table.add_row("", "FED-PRIME / FedAvg-P", *[f"{v:.2f}" for v in ratio], "")
    console.print(table)
    for setting, sizes in pools.items():
        for seed, s in zip(args.seeds, sizes):
            console.print(f"FED-PRIME inter pool size, {settings[setting]}, seed {seed}: start {s[0]}, "
                          f"min {min(s[1:])}, max {max(s[1:])}, final {s[-1]}; by round {s[1:]}")
    console.print(f"total {time.time() - t0:.0f}s; command: PYTHONPATH=. python bench/fedprime_vs_fedavg_p.py "
                  f"--rounds {args.rounds} --clients {args.clients} --batch {args.batch} --lr {args.lr} "
                  f"--hidden {args.hidden} --layers {args.layers} --rate {args.rate} --seeds {' '.join(map(str, args.seeds))}")
    if args.plot:
        plot(rows, args, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "pools": pools, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
