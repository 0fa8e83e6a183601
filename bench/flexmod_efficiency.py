"""FlexMod vs FedAvg: accuracy against cumulative encoder updates, with FlexMod's per-round schedule.

Both methods train the same experiments (same seeds, data, partition, missing masks). An
"encoder update" is one optimiser step applied to one modality encoder: FedAvg updates all M
encoders in every local step, FlexMod only those of the step's modality combination. For each
seed the table reports the encoder updates each method needed to first reach FedAvg's final
full-modality accuracy; FlexMod's beta_r and its allocation of local steps over modality
combinations are printed per round. The plot goes to --plot and, with --mlflow URI, to MLflow.

    python bench/flexmod_efficiency.py --seeds 0 1 2 --rounds 15 --flexmod-rounds 25
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


def config(args, method: str, seed: int, root: str):
    rounds = args.flexmod_rounds if method == "flexmod" else args.rounds
    return load_experiment(ROOT / "configs" / "quickstart.yaml", [
        f"method.name={method}", f"seed={seed}", f"train.rounds={rounds}", "eval.every=1", "eval.patterns=[full]",
        f"data.modalities=[{','.join(args.modalities)}]", "missing.pattern=mixed", f"missing.rate={args.rate}",
        f"partition.num_clients={args.clients}", "tracking.enabled=false", f"storage.root={root}",
        # the federation this benchmark was measured with (the quickstart now holds the PmcmFL protocol)
        "partition.alpha=0.5", "train.clients_per_round=1.0", "train.local_epochs=2",
        *[f"method.params.{kv}" for kv in (args.flexmod_param if method == "flexmod" else [])],
    ])


def fedavg_updates_per_round(cfg) -> list[float]:
    """FedAvg's encoder updates per round: every local step updates all M encoders of every sampled client."""
    data = steps.prepare_data(cfg)
    m, t = len(data.spec.names), cfg.train
    out = []
    for r in range(1, t.rounds + 1):
        clients = steps.sample_clients(cfg, r)
        out.append(float(sum(t.local_epochs * -(-len(data.clients[k]) // t.batch_size) * m for k in clients)))
    return out


def first_reach(acc: list[float], cum: list[float], target: float) -> tuple[int | None, float | None]:
    for i, a in enumerate(acc):
        if a >= target - 1e-9:
            return i + 1, cum[i]
    return None, None


def smooth(acc: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` evaluations (fewer at the start)."""
    return [float(np.mean(acc[max(0, i - window + 1) : i + 1])) for i in range(len(acc))]


def reach_table(runs: dict[int, dict], args, window: int, tol: float) -> Table:
    """Per seed: encoder updates each method needs to first reach FedAvg's final accuracy minus ``tol`` points.

    Both accuracy curves are smoothed alike (trailing mean over ``window`` rounds); ``tol`` allows
    for test-set noise (400 test samples: one standard error of a 97% accuracy is about 0.85 points).
    """
    what = "raw accuracy" if window == 1 else f"accuracy as trailing mean of {window} rounds (both methods)"
    table = Table(title=f"Encoder updates to first reach FedAvg's final ({args.rounds}-round) full-modality accuracy"
                        f"{f' minus {tol:g} points' if tol else ''}; {what}")
    for col in ("seed", "target acc %", "FedAvg round", "FedAvg enc. updates", "FlexMod round", "FlexMod enc. updates",
                "FlexMod/FedAvg", "final acc % FedAvg / FlexMod", "FlexMod total enc. updates / FedAvg's"):
        table.add_column(col, justify="right")
    ratios = []
    for seed, r in runs.items():
        fa, fm = r["fedavg"], r["flexmod"]
        acc_a, acc_f = smooth(fa["acc"], window), smooth(fm["acc"], window)
        target = acc_a[-1] - tol / 100
        ra, ua = first_reach(acc_a, fa["cum"], target)
        rf, uf = first_reach(acc_f, fm["cum"], target)
        ratio = uf / ua if uf is not None else None
        if ratio is not None:
            ratios.append(ratio)
        table.add_row(str(seed), f"{100 * target:.2f}", str(ra), f"{ua:.0f}", str(rf or "not reached"),
                      "-" if uf is None else f"{uf:.0f}", "-" if ratio is None else f"{ratio:.2f}",
                      f"{100 * acc_a[-1]:.2f} / {100 * acc_f[-1]:.2f}", f"{fm['cum'][-1] / fa['cum'][-1]:.2f}")
    table.caption = (f"reached in {len(ratios)}/{len(runs)} seeds" + (
        f"; FlexMod/FedAvg encoder updates: mean {np.mean(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f}"
        if ratios else ""))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=15, help="FedAvg rounds; its final accuracy is the target")
    ap.add_argument("--flexmod-rounds", type=int, default=25,
                    help="FlexMod rounds (more rounds, each with fewer encoder updates)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--modalities", nargs="+", default=["fou", "kar"])
    ap.add_argument("--flexmod-param", action="append", default=[], help="FlexMod param override, e.g. budget=0.6")
    ap.add_argument("--window", type=int, default=3, help="also compare accuracies smoothed over this many rounds")
    ap.add_argument("--tolerance", type=float, default=1.0,
                    help="points below FedAvg's final accuracy that count as reaching it in the smoothed comparison")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw curves and schedules here")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", type=Path, default=Path("flexmod_efficiency.png"))
    ap.add_argument("--mlflow", default=None, help="MLflow tracking URI to log the table and plot to")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=220)
    runs: dict[int, dict] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            runs[seed] = {}
            for method in ("fedavg", "flexmod"):
                cfg = config(args, method, seed, root)
                console.print(f"[bold]seed {seed}: {method}[/]")
                res = run_experiment(cfg, progress=True)
                acc = [h["eval"]["full"]["acc"] for h in res.history]
                if method == "fedavg":
                    per_round = fedavg_updates_per_round(cfg)
                    sched = None
                else:
                    state, _ = load_round(LocalStore(cfg.storage.root), res.experiment_id, cfg.train.rounds)
                    sched = state.meta["flexmod"]
                    per_round = [h["encoder_updates"] for h in sched["history"]]
                runs[seed][method] = {"acc": acc, "cum": np.cumsum(per_round).tolist(), "sched": sched}
    elapsed = time.time() - t0

    combos = ["+".join(c) for c in runs[args.seeds[0]]["flexmod"]["sched"]["combinations"]]
    console.print(reach_table(runs, args, 1, 0.0))
    console.print(reach_table(runs, args, args.window, args.tolerance))
    for seed, r in runs.items():
        t = Table(title=f"seed {seed}: per round (allocation = share of local steps per modality combination)")
        for col in ("round", "FedAvg acc %", "FedAvg cum. enc.", "FlexMod acc %", "FlexMod cum. enc.", "beta_r",
                    *[f"x({c})" for c in combos], "reward", "Shapley importance", "quality"):
            t.add_column(col, justify="right")
        hist = r["flexmod"]["sched"]["history"]
        fa = r["fedavg"]
        for i, h in enumerate(hist):
            has = i < len(fa["acc"])
            t.add_row(str(h["round"]), f"{100 * fa['acc'][i]:.1f}" if has else "", f"{fa['cum'][i]:.0f}" if has else "",
                      f"{100 * r['flexmod']['acc'][i]:.1f}", f"{r['flexmod']['cum'][i]:.0f}", f"{h['beta']:.3f}",
                      *[f"{x:.3f}" for x in h["allocation"]], "-" if h["reward"] is None else f"{h['reward']:+.2f}",
                      " ".join(f"{v:.2f}" for v in h["importance"]), " ".join(f"{v:.2f}" for v in h["quality"]))
        console.print(t)
    console.print(f"total time {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in runs.items()}, indent=1))

    fig = plot(runs, args)
    fig.savefig(args.plot)
    console.print(f"plot: {args.plot}")
    if args.mlflow:
        from mmfl.io.tracking import MlflowTracker

        tracker = MlflowTracker(args.mlflow, "mmfl-bench-flexmod")
        tracker.start("flexmod-vs-fedavg", {"seeds": args.seeds, "rounds": args.rounds, "modalities": args.modalities}, {})
        tracker.log_figure(fig, "accuracy_vs_encoder_updates.png")
        tracker.log_dict({str(s): {m: {k: v for k, v in d.items() if k != "sched"} | {"schedule": d["sched"]}
                                   for m, d in r.items()} for s, r in runs.items()}, "runs.json")
        tracker.finish()


def plot(runs: dict[int, dict], args):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for i, (seed, r) in enumerate(runs.items()):
        color = f"C{i}"  # one colour per seed; dashed FedAvg, solid FlexMod
        for method, style in (("fedavg", "--"), ("flexmod", "-")):
            ax.plot(r[method]["cum"], [100 * a for a in r[method]["acc"]], style, color=color, marker=".",
                    label=f"{method} s{seed}")
        bx.plot([h["round"] for h in r["flexmod"]["sched"]["history"]], [h["beta"] for h in r["flexmod"]["sched"]["history"]],
                color=color, marker=".", label=f"beta_r s{seed}")
    ax.set_xlabel("cumulative encoder updates")
    ax.set_ylabel("test accuracy, full modalities (%)")
    ax.set_title(f"mfeat {'+'.join(args.modalities)}, mixed@{args.rate:.2f}")
    ax.legend(fontsize=7)
    bx.set_xlabel("round")
    bx.set_ylabel("beta_r")
    bx.set_ylim(-0.05, 1.05)
    bx.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
