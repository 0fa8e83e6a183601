"""Benchmark grid (methods x missing rates x seeds): one experiment per cell, then a comparison.

Each cell is a whole experiment in one task (its rounds run by the local engine inside the pod,
with state in the bucket and metrics in its own MLflow run), so a grid costs one task per cell
plus the comparison, which keeps a benchmark run within the task budget of one KFP run.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from mmfl.config import ExperimentConfig, grid_configs, parse_config
from mmfl.data.dataset import DataSpec
from mmfl.data.missing import eval_patterns
from mmfl.errors import ConfigError
from mmfl.io.layout import latest_round, load_round
from mmfl.kfp.tasks import load_cfg, store_of, write_manifest
from mmfl.methods import resolve
from mmfl.results import matrix_records, result_row

MAX_CELLS = 38


def benchmark_cells(cfg: ExperimentConfig, methods: list[str] | None = None, rates: list[float] | None = None,
                    seeds: list[int] | None = None) -> list[ExperimentConfig]:
    """The base config varied over every (method, missing rate, seed), checked to fit one run."""
    cells = grid_configs(cfg.model_dump(mode="json"), methods, rates, seeds, source="benchmark cell")
    for cell in cells:
        resolve(cell)
    if len(cells) > MAX_CELLS:
        raise ConfigError(f"benchmark grid has {len(cells)} cells; at most {MAX_CELLS} fit in one run "
                          "(split the methods, rates or seeds over several runs)")
    return cells


def fresh_config(cfg: ExperimentConfig, run_key: str) -> ExperimentConfig:
    """The cell under a store prefix of its own benchmark run, so a recurring benchmark recomputes
    (experiment ids are deterministic and would otherwise find last time's checkpoints)."""
    data = cfg.model_dump(mode="json")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in run_key).strip("-.") or "run"
    data["storage"]["root"] = f"{data['storage']['root'].rstrip('/')}/benchmarks/{safe[:80]}"
    cell = parse_config(data, source="benchmark cell")
    resolve(cell)
    return cell


def run_cell_task(config_json: str, result_path: str, run_key: str = "", kfp_run_id: str = "") -> dict[str, Any]:
    """Run (or resume) one experiment to the end; with ``run_key``, under that benchmark run's prefix.
    The cell's MLflow run is tagged with the KFP run (``kfp_run_id``)."""
    from mmfl.engine.loop import run_experiment
    from mmfl.kfp.runtime import setup_task
    from mmfl.kfp.tasks import kfp_tags

    cfg = load_cfg(config_json)
    if run_key:
        cfg = fresh_config(cfg, run_key)
    setup_task(cfg)
    result = run_experiment(cfg, engine="kfp", tags=kfp_tags(kfp_run_id))
    return write_manifest(result_path, {"experiment_id": result.experiment_id, "run_id": result.run_id or "",
                                        "rounds": result.rounds_done,
                                        "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True)})


def collect_rows(configs: list[ExperimentConfig]) -> tuple[list[dict[str, Any]], list[str]]:
    """Final test matrix of each cell, read from its checkpoint in the store."""
    rows, patterns = [], []
    for cfg in configs:
        store, exp_id = store_of(cfg), cfg.experiment_id()
        last = latest_round(store, exp_id)
        if last is None or last < cfg.train.rounds:
            raise ConfigError(f"benchmark cell {exp_id}: finished {last or 0} of {cfg.train.rounds} rounds")
        state, metrics = load_round(store, exp_id, last)
        final = metrics.get("eval") or {}
        patterns = patterns or eval_patterns(DataSpec.from_json(state.meta["data_spec"]).names, cfg.eval.patterns)
        rows.append({**result_row(cfg, last, final), "rate": cfg.missing.rate})
    return rows, patterns


def summarise(rows: list[dict[str, Any]], patterns: list[str]) -> dict[str, list]:
    """Mean and standard deviation over seeds of accuracy and F1, per (method, rate, test pattern)."""
    groups: dict[tuple[str, float, str], list[tuple[float, float]]] = {}
    for row in rows:
        for p in patterns:
            if p in row["results"]:
                groups.setdefault((row["method"], row["rate"], p), []).append(
                    (row["results"][p]["acc"], row["results"][p]["f1"]))
    out: dict[str, list] = {k: [] for k in ("method", "missing_rate", "test_pattern", "seeds", "acc_mean", "acc_std",
                                            "f1_mean", "f1_std")}
    for (method, rate, p), vals in sorted(groups.items()):
        arr = np.asarray(vals)
        for key, value in (("method", method), ("missing_rate", rate), ("test_pattern", p), ("seeds", len(vals)),
                           ("acc_mean", float(arr[:, 0].mean())), ("acc_std", float(arr[:, 0].std())),
                           ("f1_mean", float(arr[:, 1].mean())), ("f1_std", float(arr[:, 1].std()))):
            out[key].append(value)
    return out


def plot_summary(summary: dict[str, list], patterns: list[str], title: str):
    """Accuracy vs training missing rate, one panel per test pattern, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(patterns), figsize=(4 * len(patterns), 3.5), dpi=100, squeeze=False)
    methods = sorted(set(summary["method"]))
    for ax, p in zip(axes[0], patterns):
        for m in methods:
            idx = [i for i, (mm, pp) in enumerate(zip(summary["method"], summary["test_pattern"])) if mm == m and pp == p]
            xs = [summary["missing_rate"][i] for i in idx]
            ax.errorbar(xs, [summary["acc_mean"][i] for i in idx], yerr=[summary["acc_std"][i] for i in idx],
                        marker="o", capsize=3, label=m)
        ax.set_title(f"test: {p}")
        ax.set_xlabel("training missing rate")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def summary_html(summary: dict[str, list], png: bytes, title: str) -> str:
    head = "".join(f"<th>{k}</th>" for k in summary)
    body = "".join(
        "<tr>" + "".join(f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in row) + "</tr>"
        for row in zip(*summary.values()))
    img = base64.b64encode(png).decode()
    return (f"<html><body><h3>{title}</h3><table border='1'><tr>{head}</tr>{body}</table>"
            f"<img src='data:image/png;base64,{img}'/></body></html>")


def compare_task(cells_json: list[str], name: str, html_path: str, cell_runs: list[str] | None = None,
                 tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Comparison table and plot of all cells, logged to MLflow as a dated parent run of the cells' runs
    (``cell_runs``, their MLflow run ids) in the cells' experiment; ``tags`` name the KFP run."""
    from matplotlib import pyplot as plt

    configs = [load_cfg(c) for c in cells_json]
    if not configs:
        raise ConfigError("benchmark: no cells to compare")
    rows, patterns = collect_rows(configs)
    summary = summarise(rows, patterns)
    title = f"{name}: {configs[0].data.name}, {configs[0].train.rounds} rounds"
    fig = plot_summary(summary, patterns, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    Path(html_path).parent.mkdir(parents=True, exist_ok=True)
    Path(html_path).write_text(summary_html(summary, buf.getvalue(), title))
    run_id = ""
    tracking = configs[0].tracking
    if tracking.enabled:
        from mmfl.engine.comparison import start_comparison
        from mmfl.io.tracking import MlflowTracker

        # the parent lives in the cells' own experiment, so MLflow shows the cells nested under it
        tracker = MlflowTracker(tracking.uri, tracking.experiment)
        run_id = start_comparison(tracker, name, [r for r in (cell_runs or []) if r],
                                  tags={"mmfl.kind": "benchmark", "mmfl.benchmark": name, **(tags or {})},
                                  params={"cells": len(configs), "rounds": configs[0].train.rounds,
                                          "data": configs[0].data.name})
        tracker.log_table(summary, "benchmark_summary.json")
        tracker.log_table(matrix_records(rows, patterns), "benchmark_cells.json")
        tracker.log_figure(fig, "benchmark_accuracy_vs_missing_rate.png")
        tracker.log_dict({"experiments": [c.experiment_id() for c in configs], "runs": cell_runs or []},
                         "benchmark_cells_index.json")
        tracker.finish("FINISHED")
    plt.close(fig)
    return {"cells": len(configs), "mlflow_run_id": run_id or "", "patterns": ",".join(patterns)}
