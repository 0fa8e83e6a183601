"""Benchmark grid (methods x missing rates x seeds): one experiment per cell, then a comparison.

Each cell is a whole experiment in one task (its rounds run by the local engine inside the pod,
with state in the bucket and metrics in its own MLflow run), so a grid costs one task per cell
plus the comparison, which keeps a benchmark run within the task budget of one KFP run.

The comparison is the report's (``mmfl/comparison.py``) over the cells read back from the store
as ``Run`` records (``io.runs.stored_run``): the same groups, mean ± sample std over seeds and
table as ``mmfl report``, with tracking on or off; the benchmark adds only the
accuracy-vs-missing-rate plot, drawn from the comparison's own statistics.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

from mmfl.comparison import (FINAL_FIGURE, METHOD_KEY, Comparison, Group, Run, compare, figure_name, plot_final,
                             plot_pattern, to_html)
from mmfl.config import ExperimentConfig, grid_configs, parse_config
from mmfl.errors import ConfigError
from mmfl.io.layout import latest_round
from mmfl.io.runs import stored_run
from mmfl.kfp.tasks import load_cfg, store_of, write_manifest
from mmfl.methods import resolve
from mmfl.results import matrix_records, result_row

MAX_CELLS = 38
RATE_KEY = "missing.rate"
RATE_FIGURE = "accuracy_vs_missing_rate.png"


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


def collect_runs(configs: list[ExperimentConfig], cell_runs: list[str] | None = None
                 ) -> tuple[list[Run], list[dict[str, Any]]]:
    """Each cell as the report sees a run (``io.runs.stored_run``: read from its checkpoints in the
    store, so it works with tracking off; no wall time or peak memory, which only MLflow holds) and
    its row of the test matrix. ``cell_runs``: the cells' MLflow run ids, in the same order, if known."""
    runs, rows = [], []
    run_ids = [*(cell_runs or []), *[""] * len(configs)]
    for cfg, run_id in zip(configs, run_ids):
        store, exp_id = store_of(cfg), cfg.experiment_id()
        last = latest_round(store, exp_id)
        if last is None or last < cfg.train.rounds:
            raise ConfigError(f"benchmark cell {exp_id}: finished {last or 0} of {cfg.train.rounds} rounds")
        run = stored_run(store, cfg, last, run_id)
        runs.append(run)
        rows.append(result_row(cfg, last, run.results))
    return runs, rows


def plot_missing_rate(comp: Comparison, title: str):
    """Accuracy vs training missing rate, one panel per test pattern, one line per method (and any
    other setting that differs besides the rate); points and error bars are ``Comparison.stat``:
    the mean and sample std over seeds, as in the table."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    others = [k for k in comp.varying if k not in (METHOD_KEY, RATE_KEY)]
    lines: dict[str, list[Group]] = {}
    for g in comp.groups:
        lines.setdefault(" ".join([g.method, *(f"{k}={g.settings.get(k, '-')}" for k in others)]), []).append(g)
    patterns = comp.patterns
    fig, axes = plt.subplots(1, len(patterns), figsize=(4 * len(patterns), 3.5), dpi=100, squeeze=False)
    for ax, p in zip(axes[0], patterns):
        for label, groups in lines.items():
            points = sorted(((float(g.settings.get(RATE_KEY, "nan")), comp.stat(g, p)) for g in groups),
                            key=lambda point: point[0])
            points = [(x, s) for x, s in points if s.n]
            ax.errorbar([x for x, _ in points], [s.mean for _, s in points],
                        yerr=[0.0 if math.isnan(s.std) else s.std for _, s in points], marker="o", capsize=3,
                        label=label)
        ax.set_title(f"test: {p}")
        ax.set_xlabel("training missing rate")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {comp.metric} (mean ± std over seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def compare_task(cells_json: list[str], name: str, html_path: str, cell_runs: list[str] | None = None,
                 tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The report's comparison (``mmfl.comparison.compare``) of all cells, read from the store.

    ``html_path`` gets the report's table (``to_html``: mean ± sample std over seeds per group of
    equal settings) with the accuracy-vs-missing-rate plot, the report's final-accuracy plot and
    its accuracy-vs-round/cost plot per test pattern, all inline. With tracking on, a dated parent
    run of the cells' runs (``cell_runs``, their MLflow run ids) in the cells' experiment gets the
    same table as ``benchmark_summary.json`` (``Comparison.columns``), the per-cell test matrix
    (``benchmark_cells.json``) and the plot; ``tags`` name the KFP run."""
    from matplotlib import pyplot as plt

    configs = [load_cfg(c) for c in cells_json]
    if not configs:
        raise ConfigError("benchmark: no cells to compare")
    runs, rows = collect_runs(configs, cell_runs)
    comp = compare(runs)
    title = f"{name}: {configs[0].data.name}, {configs[0].train.rounds} rounds"
    figures = {RATE_FIGURE: plot_missing_rate(comp, title), FINAL_FIGURE: plot_final(comp, title),
               **{figure_name(p): plot_pattern(comp, p) for p in comp.patterns}}
    Path(html_path).parent.mkdir(parents=True, exist_ok=True)
    Path(html_path).write_text(to_html(comp, title, {n: _data_uri(f) for n, f in figures.items()}))
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
        tracker.log_table(comp.columns(), "benchmark_summary.json")
        tracker.log_table(matrix_records(rows, comp.patterns), "benchmark_cells.json")
        tracker.log_figure(figures[RATE_FIGURE], "benchmark_accuracy_vs_missing_rate.png")
        tracker.log_dict({"experiments": [c.experiment_id() for c in configs], "runs": cell_runs or [],
                          "notes": comp.notes}, "benchmark_cells_index.json")
        tracker.finish("FINISHED")
    for fig in figures.values():
        plt.close(fig)
    return {"cells": len(configs), "mlflow_run_id": run_id or "", "patterns": ",".join(comp.patterns)}
