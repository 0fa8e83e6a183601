"""A comparison of several experiments as one dated MLflow parent run with the experiments nested.

``mmfl run`` with several methods (``make run``) and the benchmark pipeline's ``compare`` task both
record their comparison this way: a parent run named ``<name> <UTC date and time>`` in the
experiments' own MLflow experiment, each experiment's run nested under it (``mlflow.parentRunId``),
and the test matrix as a table plus a grouped bar plot of final accuracy per test pattern. An
experiment run that a later comparison reuses (a resumed, already finished experiment) moves under
the later parent.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mmfl.results import matrix_records


def row_label(row: dict[str, Any]) -> str:
    return f"{row['method']} / {row['train']} / s{row['seed']}"


def plot_comparison(rows: list[dict[str, Any]], patterns: list[str], title: str):
    """Final test accuracy of each experiment, grouped by test pattern."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(patterns) * max(1, len(rows)) / 2), 3.8), dpi=100)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        accs = [row["results"].get(p, {}).get("acc", float("nan")) for p in patterns]
        ax.bar([j + i * width for j in range(len(patterns))], accs, width, label=row_label(row))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(patterns))], patterns)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def start_comparison(tracker: Any, name: str, rows: list[dict[str, Any]], patterns: list[str], children: list[str],
                     tags: dict[str, str] | None = None, params: dict[str, Any] | None = None) -> str:
    """Open the dated parent run, nest ``children`` (MLflow run ids) under it and log the table and plot.

    The parent stays open so the caller can add artifacts; it ends with ``tracker.finish()``."""
    from matplotlib import pyplot as plt

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run_id = tracker.start(run_name=f"{name} {stamp}", params={"experiments": len(children), **(params or {})},
                           tags={"mmfl.kind": "comparison", "mmfl.comparison": name, **(tags or {})})
    for child in children:
        tracker.set_tags(child, {"mlflow.parentRunId": run_id, "mmfl.comparison": name})
    tracker.log_table(matrix_records(rows, patterns), "comparison_table.json")
    tracker.log_dict({"runs": children, "rows": rows}, "comparison_runs.json")
    fig = plot_comparison(rows, patterns, f"{name} ({stamp})")
    tracker.log_figure(fig, "comparison_accuracy.png")
    plt.close(fig)
    return run_id
