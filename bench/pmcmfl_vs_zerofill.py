"""PmcmFL vs zero-fill FedAvg on mfeat with 50% of training samples missing a modality.

Same seeds for both methods, several seeds, accuracy on every test pattern (full and each
modality alone) as mean +- std, plus how many seeds PmcmFL wins. PmcmFL's uni-modal inference
options are all evaluated on the same trained model. A benchmark, not a test: it prints a table.

    python bench/pmcmfl_vs_zerofill.py --seeds 0 1 2 --rounds 15
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

INFERENCE = ["classifier", "retrieval", "l1", "l2", "cosine"]


def config(args, method: str, seed: int, root: str, extra: list[str] | None = None):
    overrides = [
        f"method.name={method}", f"seed={seed}", f"train.rounds={args.rounds}", f"eval.every={args.rounds}",
        f"data.modalities=[{','.join(args.modalities)}]", "missing.pattern=mixed", f"missing.rate={args.rate}",
        f"partition.num_clients={args.clients}", "tracking.enabled=false", f"storage.root={root}", *(extra or []),
    ]
    return load_experiment(ROOT / "configs" / "quickstart.yaml", overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rate", type=float, default=0.5, help="share of training samples missing one modality")
    ap.add_argument("--modalities", nargs="+", default=["fou", "kar"], help="mfeat views used as modalities")
    ap.add_argument("--baselines", nargs="+", default=["zerofill", "fedavg"],
                    help="methods trained for comparison; zerofill (required) is the reference of the win counts")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra PmcmFL run, LABEL:param=value[,param=value], e.g. no-contrast:contrast_weight=0")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on small hosts)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    if "zerofill" not in args.baselines:
        ap.error("--baselines must include zerofill (the reference of the comparison)")
    torch.set_num_threads(args.threads)
    console = Console(width=160)
    results: dict[str, dict[int, dict[str, float]]] = {}
    patterns: list[str] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            for method in (*args.baselines, "pmcmfl"):
                cfg = config(args, method, seed, root)
                console.print(f"[bold]seed {seed}: {method}[/]")
                res = run_experiment(cfg, progress=True)
                patterns = res.patterns
                if method != "pmcmfl":
                    results.setdefault(method, {})[seed] = {p: v["acc"] for p, v in res.final.items()}
                    continue
                state, _ = load_round(LocalStore(cfg.storage.root), res.experiment_id, cfg.train.rounds)
                data = steps.prepare_data(cfg)
                for option in INFERENCE:  # same trained model, each uni-modal inference option
                    ocfg = config(args, method, seed, root, [f"method.params.inference={option}"])
                    ev = steps.evaluate(ocfg, state, data.test)
                    results.setdefault(f"pmcmfl ({option})", {})[seed] = {p: v["acc"] for p, v in ev.items()}
            for variant in args.variant:  # ablations: PmcmFL with some parameters changed
                label, _, assignments = variant.partition(":")
                extra = [f"method.params.{kv}" for kv in assignments.split(",") if kv]
                cfg = config(args, "pmcmfl", seed, root, extra)
                console.print(f"[bold]seed {seed}: pmcmfl {label} ({assignments})[/]")
                res = run_experiment(cfg, progress=True)
                results.setdefault(f"pmcmfl {label}", {})[seed] = {p: v["acc"] for p, v in res.final.items()}
    elapsed = time.time() - t0

    table = Table(title=f"mfeat {'+'.join(args.modalities)}, train mixed@{args.rate:.2f}, {args.clients} clients, "
                        f"{args.rounds} rounds, seeds {args.seeds}: test accuracy %, mean ± std (wins vs zero-fill)")
    table.add_column("method")
    for p in patterns:
        table.add_column(p, justify="right")
    base = results["zerofill"]
    for name, per_seed in results.items():
        cells = []
        for p in patterns:
            acc = np.array([per_seed[s][p] for s in args.seeds]) * 100
            cell = f"{acc.mean():.1f} ± {acc.std(ddof=1) if len(acc) > 1 else 0.0:.1f}"
            if name.startswith("pmcmfl"):
                wins = sum(per_seed[s][p] > base[s][p] for s in args.seeds)
                diff = np.mean([(per_seed[s][p] - base[s][p]) * 100 for s in args.seeds])
                cell += f"  ({diff:+.1f}, {wins}/{len(args.seeds)})"
            cells.append(cell)
        table.add_row(name, *cells)
    console.print(table)
    console.print(f"total time {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                         "results": {k: {str(s): v for s, v in d.items()} for k, d in results.items()}},
                                        indent=1))


if __name__ == "__main__":
    main()
