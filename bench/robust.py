"""Accuracy under Byzantine clients for each aggregation rule (``make bench-robust``).

The setting is ``make run``'s (configs/quickstart.yaml: FedAvg on mfeat pix+fou, 10 Dirichlet(0.5)
clients, 50 % mixed missing). Clients ``0 .. k-1`` attack in every round, ``k = round(fraction * 10)``,
with one of the attacks of ``reliability.fault_injection``:

- ``sign flip``: the client sends its weights multiplied by -1 (mode ``scale``, ``scale: -1``);
- ``delta flip``: it sends the global model minus its update (mode ``boost``, ``scale: -1``; not in
  the default grid);
- ``boost x10``: the global model plus 10 times its update (mode ``boost``, model replacement);
- ``noise``: the global model plus Gaussian noise, sigma 0.01 per weight (mode ``noise``);
- ``label flip``: it trains on labels ``9 - y`` (mode ``labels``);
- ``false count``: it claims 10^9 samples (mode ``samples``).

Each aggregation rule runs with the default screening; the ``unscreened`` variants switch the
norm-ratio screen off, to show what a rule does on its own. Two tables: the grid (every rule and
attack, 0, 20 and 40 % of the clients attacking by default; ``--grid-rounds`` rounds, fewer than
``make run``'s 30 to keep it affordable on a small machine), and the headline check at the full
``--rounds``: 1 and 3 of 10 clients flipping signs or boosting, default configuration and robust
rules, against the clean run. Results are
cached in ``--json`` (an interrupted benchmark continues where it stopped) and written as
markdown between the ``bench-robust`` markers of ``--doc``, with a plot (``--plot``).

    python -m bench.robust --jobs 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ATTACKS: dict[str, dict[str, Any]] = {
    "sign flip": {"mode": "scale", "scale": -1.0},
    "delta flip": {"mode": "boost", "scale": -1.0},
    "boost x10": {"mode": "boost", "scale": 10.0},
    "noise": {"mode": "noise"},
    "label flip": {"mode": "labels"},
    "false count": {"mode": "samples"},
}
RULES: dict[str, dict[str, Any]] = {
    "default (mean)": {},
    "median": {"aggregation": {"rule": "median"}},
    "trimmed_mean": {"aggregation": {"rule": "trimmed_mean"}},
    "multi_krum": {"aggregation": {"rule": "multi_krum"}},
    "clip": {"aggregation": {"rule": "clip"}},
    "mean, unscreened": {"max_norm_ratio": None},
    "median, unscreened": {"max_norm_ratio": None, "aggregation": {"rule": "median"}},
    "trimmed_mean, unscreened": {"max_norm_ratio": None, "aggregation": {"rule": "trimmed_mean"}},
}
FRACTIONS = [0.2, 0.4]
HEADLINE = ("sign flip", "boost x10")
HEADLINE_RULES = ["default (mean)", "mean, unscreened", "median", "multi_krum", "median, unscreened",
                  "trimmed_mean, unscreened"]
GRID_RULES = ["default (mean)", "median", "trimmed_mean", "multi_krum", "clip"]
GRID_ATTACKS = ["sign flip", "boost x10", "noise", "label flip", "false count"]
START, END = "<!-- bench-robust:start -->", "<!-- bench-robust:end -->"


def key(rule: str, attack: str, fraction: float, rounds: int) -> str:
    return f"{rule}|{attack if fraction else 'none'}|{fraction:g}|{rounds}"


def make_config(base: Path, rule: str, attack: str, fraction: float, rounds: int, threads: int):
    from mmfl.config import load_config
    from mmfl.methods import parse_experiment

    cfg = load_config(base, [f"train.threads={threads}", "tracking.enabled=false", f"train.rounds={rounds}"])
    raw = cfg.model_dump(mode="json")
    n = raw["partition"]["num_clients"]
    attackers = list(range(int(round(fraction * n))))
    rel = raw["reliability"]
    for name, value in RULES[rule].items():
        rel[name] = {**rel[name], **value} if isinstance(value, dict) else value
    rel["fault_injection"] = [{"client": c, **ATTACKS[attack]} for c in attackers]
    return parse_experiment(raw), attackers


def run_one(job: tuple[str, str, str, float, int, int]) -> tuple[str, dict[str, Any]]:
    """Train one configuration in this process (no store, evaluation after the last round)."""
    base, rule, attack, fraction, rounds, threads = job
    import logging

    logging.disable(logging.WARNING)
    from mmfl.engine import steps
    from mmfl.engine.robust import RoundFailedError

    cfg, attackers = make_config(Path(base), rule, attack, fraction, rounds, threads)
    steps.apply_execution_settings(cfg)
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    sizes = {c: len(s) for c, s in shards.items()}
    state = steps.init_state(cfg, data.spec)
    rejected = {"attacker": 0, "honest": 0}
    t0 = time.perf_counter()
    out: dict[str, Any] = {"rule": rule, "attack": attack if fraction else "none", "fraction": fraction,
                           "rounds": rounds, "attackers": attackers}
    try:
        for r in range(1, rounds + 1):
            clients = steps.sample_clients(cfg, r)
            updates = steps.client_train(cfg, state, shards, clients)
            updates = steps.upload_prototypes(cfg, state, shards, updates)
            state = steps.aggregate(cfg, state, updates, expected_clients=clients, shard_sizes=sizes)
            for item in state.meta["history"][-1]["rejected"]:
                rejected["attacker" if item["client"] in attackers else "honest"] += 1
        result = steps.evaluate(cfg, state, data.test)
        out.update(acc={p: v["acc"] for p, v in result.items()})
    except RoundFailedError as exc:
        out.update(acc=None, failed=str(exc).split(";")[0])
    out.update(rejected=rejected, seconds=round(time.perf_counter() - t0, 1))
    return key(rule, attack, fraction, rounds), out


def fmt(res: dict[str, Any] | None, clean: float | None = None) -> str:
    if res is None:
        return "?"
    if res.get("acc") is None:
        return "failed"
    acc = 100 * res["acc"]["full"]
    text = f"{acc:.1f}"
    if clean is not None:
        text += f" ({acc - clean:+.1f})"
    return text


def markdown(results: dict[str, dict[str, Any]], rules: list[str], grid_rules: list[str], attacks: list[str],
             fractions: list[float], grid_rounds: int, rounds: int, seconds: float) -> str:
    lines = [START, ""]
    clean = {r: results.get(key(r, "none", 0.0, rounds)) for r in rules}
    lines += [f"Headline check, {rounds} rounds (`make run`'s setting), full-modality test accuracy in %, "
              "the difference to the clean default run in brackets:", ""]
    ref = clean.get(rules[0])
    ref_acc = 100 * ref["acc"]["full"] if ref and ref.get("acc") else None
    head = ["attack", "attackers"] + rules
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| none | 0 of 10 | " + " | ".join(fmt(clean[r], ref_acc) for r in rules) + " |")
    for attack in HEADLINE:
        for k in (1, 3):
            cells = [fmt(results.get(key(r, attack, k / 10, rounds)), ref_acc) for r in rules]
            lines.append(f"| {attack} | {k} of 10 | " + " | ".join(cells) + " |")
    lines += ["", f"Grid, {grid_rounds} rounds, full-modality test accuracy in % (rejected updates over all rounds: "
              "attackers / honest clients):", ""]
    head = ["rule", "attack"] + [f"{int(f * 100)} %" for f in [0.0, *fractions]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule in grid_rules:
        c = results.get(key(rule, "none", 0.0, grid_rounds))
        for attack in attacks:
            cells = [fmt(c) + (f" ({c['rejected']['attacker']}/{c['rejected']['honest']})" if c else "")]
            for f in fractions:
                res = results.get(key(rule, attack, f, grid_rounds))
                cells.append(fmt(res) + (f" ({res['rejected']['attacker']}/{res['rejected']['honest']})" if res else ""))
            lines.append(f"| {rule} | {attack} | " + " | ".join(cells) + " |")
    lines += ["", "![accuracy vs share of attackers](img/bench_robust.png)", "",
              f"One seed (0); {len(results)} runs, {seconds / 60:.0f} min of training in total on a shared "
              "2-core machine (`train.threads=1`).", "", END]
    return "\n".join(lines)


def plot(results: dict[str, dict[str, Any]], rules: list[str], attacks: list[str], fractions: list[float],
         rounds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.2), sharey=True)
    for ax, attack in zip(axes, attacks):
        for rule in rules:
            xs, ys = [], []
            for f in [0.0, *fractions]:
                res = results.get(key(rule, attack, f, rounds))
                if res is not None:
                    xs.append(100 * f)
                    ys.append(100 * res["acc"]["full"] if res.get("acc") else float("nan"))
            ax.plot(xs, ys, marker="o", label=rule)
        ax.set_title(attack)
        ax.set_xlabel("Byzantine clients (%)")
    axes[0].set_ylabel("test accuracy, full (%)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    ap.add_argument("--rounds", type=int, default=30, help="rounds of the headline check (make run: 30)")
    ap.add_argument("--grid-rounds", type=int, default=10, help="rounds of each grid run")
    ap.add_argument("--rules", nargs="+", default=HEADLINE_RULES, choices=list(RULES), help="rules of the headline check")
    ap.add_argument("--grid-rules", nargs="+", default=GRID_RULES, choices=list(RULES))
    ap.add_argument("--attacks", nargs="+", default=GRID_ATTACKS, choices=list(ATTACKS), help="attacks of the grid")
    ap.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (one torch thread each)")
    ap.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "robust.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "bench_robust.png",
                    help="accuracy vs share of attackers, one panel per attack")
    ap.add_argument("--no-grid", action="store_true", help="only the headline check")
    args = ap.parse_args()

    results: dict[str, dict[str, Any]] = json.loads(args.json.read_text()) if args.json.exists() else {}
    jobs = []
    for rule in args.rules:  # headline check first: it is what the docs promise
        jobs.append((rule, "none", 0.0, args.rounds))
        jobs += [(rule, a, k / 10, args.rounds) for a in HEADLINE for k in (1, 3)]
    if not args.no_grid:
        for rule in args.grid_rules:
            jobs.append((rule, "none", 0.0, args.grid_rounds))
            jobs += [(rule, a, f, args.grid_rounds) for a in args.attacks for f in args.fractions]
    todo = list(dict.fromkeys(j for j in jobs if key(*j) not in results))
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} cached in {args.json}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    work = [(str(args.config), *j, 1) for j in todo]
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs) if args.jobs > 1 else _Inline() as pool:
        for i, (k, res) in enumerate(pool.imap_unordered(run_one, work), 1):
            results[k] = res
            args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
            print(f"[{i}/{len(work)}] {k}: {fmt(res)} in {res['seconds']} s, rejected {res['rejected']}", flush=True)
    seconds = sum(r["seconds"] for r in results.values())
    text = markdown(results, args.rules, args.grid_rules, args.attacks, args.fractions, args.grid_rounds, args.rounds,
                    seconds)
    print(text)
    if not args.no_grid:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(results, args.grid_rules, args.attacks, args.fractions, args.grid_rounds, args.plot)
    doc = args.doc.read_text()
    if START in doc and END in doc:
        args.doc.write_text(doc[: doc.index(START)] + text + doc[doc.index(END) + len(END):])
        print(f"updated {args.doc} ({time.perf_counter() - t0:.0f} s)")


class _Inline:
    """The Pool interface, run in this process (``--jobs 1``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, items):
        return map(fn, items)


if __name__ == "__main__":
    main()
