"""PmcmFL (paper variant) vs FedAvg and zero-fill under the paper's missing-data and federation settings.

Paper settings (Noirebao/Multimodal_Federated, src/main.py and dataset.py): each modality of
a training sample missing independently with probability 0.5 and samples missing both dropped
(``independent@0.5`` + ``drop_all_missing``), Dirichlet(0.1) label skew, 35 clients of which 10
train per round, 5 local epochs, 20 rounds. Every method trains with the same seeds, data,
partition, masks, rounds, local epochs and batch size (equal local compute: the same number of
optimiser steps per client). Per dataset the script prints test accuracy (mean +- std over
seeds) on every test pattern, and for PmcmFL the paired difference to zero-fill and to FedAvg
with the number of seeds it wins. PmcmFL's uni-modal inference options are evaluated on the same
trained model; ``--variant`` adds ablations. A benchmark, not a test.

    python bench/pmcmfl_vs_zerofill.py --seeds 0 1 2                       # both datasets
    python bench/pmcmfl_vs_zerofill.py --datasets mfeat --variant no-contrast:fused_weight=0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from mmfl.engine import steps  # noqa: E402
from mmfl.io.layout import load_round  # noqa: E402
from mmfl.local import run_experiment  # noqa: E402
from mmfl.io.store import LocalStore  # noqa: E402
from mmfl.methods import load_experiment

INFERENCE = ["retrieval", "classifier", "l1", "l2", "cosine"]
REFERENCES = ("zerofill", "fedavg")

# Per dataset: modalities, federation size and test fraction. BasicMotions has 80 recordings in
# all, so it cannot hold 35 clients: it is scaled down to 4 clients, all training every round.
DATASETS = {
    "mfeat": {"modalities": ["fou", "kar"], "clients": 35, "per_round": 10, "test_fraction": 0.2},
    "basicmotions": {"modalities": ["accelerometer", "gyroscope"], "clients": 4, "per_round": 4, "test_fraction": 0.5},
}


def config(args, dataset: str, method: str, seed: int, root: str, extra: list[str] | None = None):
    d = DATASETS[dataset]
    mods = d["modalities"]
    overrides = [
        f"name=bench-pmcmfl-{dataset}", f"data.name={dataset}", f"data.modalities=[{','.join(mods)}]",
        f"data.test_fraction={d['test_fraction']}", f"method.name={method}", f"seed={seed}",
        f"train.rounds={args.rounds}", f"eval.every={args.rounds}", f"train.local_epochs={args.local_epochs}",
        f"partition.num_clients={d['clients']}", f"train.clients_per_round={d['per_round'] / d['clients']}",
        f"partition.alpha={args.alpha}", "partition.min_client_size=4",
        "missing.pattern=independent", f"missing.rate={args.rate}", "missing.drop_all_missing=true",
        f"eval.patterns=[full,~train,mixed@0.5,only:{mods[0]},only:{mods[1]}]",
        "tracking.enabled=false", f"storage.root={root}", *(extra or []),
    ]
    return load_experiment(ROOT / "configs" / "quickstart.yaml", overrides)


def run_dataset(args, dataset: str, root: str, console: Console) -> tuple[dict, list[str], dict]:
    results: dict[str, dict[int, dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {}
    patterns: list[str] = []
    for seed in args.seeds:
        for method in (*REFERENCES, "pmcmfl"):
            cfg = config(args, dataset, method, seed, root)
            t0 = time.time()
            res = run_experiment(cfg, progress=False)
            seconds.setdefault(method, []).append(time.time() - t0)
            console.print(f"{dataset} seed {seed}: {method} {seconds[method][-1]:.0f} s")
            patterns = res.patterns
            if method != "pmcmfl":
                results.setdefault(method, {})[seed] = {p: v["acc"] for p, v in res.final.items()}
                continue
            state, _ = load_round(LocalStore(cfg.storage.root), res.experiment_id, cfg.train.rounds)
            data = steps.prepare_data(cfg)
            for option in INFERENCE:  # the same trained model, each uni-modal inference option
                ocfg = config(args, dataset, method, seed, root, [f"method.params.inference={option}"])
                ev = steps.evaluate(ocfg, state, data.test)
                results.setdefault(f"pmcmfl ({option})", {})[seed] = {p: v["acc"] for p, v in ev.items()}
        for variant in args.variant:  # ablations: PmcmFL with some parameters changed
            label, _, assignments = variant.partition(":")
            extra = [f"method.params.{kv}" for kv in assignments.split(",") if kv]
            cfg = config(args, dataset, "pmcmfl", seed, root, extra)
            t0 = time.time()
            res = run_experiment(cfg, progress=False)
            seconds.setdefault(f"pmcmfl {label}", []).append(time.time() - t0)
            console.print(f"{dataset} seed {seed}: pmcmfl {label} ({assignments}) {time.time() - t0:.0f} s")
            results.setdefault(f"pmcmfl {label}", {})[seed] = {p: v["acc"] for p, v in res.final.items()}
    return results, patterns, seconds


def table(args, dataset: str, results: dict, patterns: list[str], seconds: dict) -> Table:
    d = DATASETS[dataset]
    t = Table(title=(f"{dataset} {'+'.join(d['modalities'])}: train independent@{args.rate}+drop, Dirichlet({args.alpha}), "
                     f"{d['per_round']} of {d['clients']} clients per round, {args.rounds} rounds x {args.local_epochs} "
                     f"local epochs, seeds {args.seeds}. Test accuracy %, mean ± std; PmcmFL rows: paired mean "
                     "difference vs zero-fill / FedAvg (seeds won vs zero-fill)"))
    t.add_column("method")
    for p in patterns:
        t.add_column(p, justify="right")
    t.add_column("s/run", justify="right")
    for name, per_seed in results.items():
        cells = []
        for p in patterns:
            acc = np.array([per_seed[s][p] for s in args.seeds]) * 100
            cell = f"{acc.mean():.1f} ± {acc.std(ddof=1) if len(acc) > 1 else 0.0:.1f}"
            if name.startswith("pmcmfl"):
                diffs = [np.mean([(per_seed[s][p] - results[r][s][p]) * 100 for s in args.seeds]) for r in REFERENCES]
                wins = sum(per_seed[s][p] > results["zerofill"][s][p] for s in args.seeds)
                cell += f" ({diffs[0]:+.1f} / {diffs[1]:+.1f}, {wins}/{len(args.seeds)})"
            cells.append(cell)
        secs = seconds.get(name.split(" (")[0])
        t.add_row(name, *cells, f"{np.mean(secs):.0f}" if secs else "")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["mfeat", "basicmotions"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=20, help="communication rounds (paper: 20)")
    ap.add_argument("--local-epochs", type=int, default=5, help="local epochs per round (paper: 5)")
    ap.add_argument("--alpha", type=float, default=0.1, help="Dirichlet label skew (paper: 0.1)")
    ap.add_argument("--rate", type=float, default=0.5, help="per-modality missing probability (paper: 0.5)")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra PmcmFL run, LABEL:param=value[,param=value], e.g. no-contrast:fused_weight=0")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on small hosts)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=200)
    out = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as root:
        for dataset in args.datasets:
            results, patterns, seconds = run_dataset(args, dataset, root, console)
            console.print(table(args, dataset, results, patterns, seconds))
            out[dataset] = {"patterns": patterns, "seconds": seconds,
                            "results": {k: {str(s): v for s, v in d.items()} for k, d in results.items()}}
    console.print(f"total time {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                         **out}, indent=1))


if __name__ == "__main__":
    main()
