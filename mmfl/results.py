"""The test matrix (training setting x test pattern) as a table and accuracy-vs-round plots."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from mmfl.config import ExperimentConfig, pattern_metric_name


def metric_key(kind: str, pattern: str) -> str:
    """MLflow metric name of a test pattern's metric, e.g. ``acc/mixed_0.5`` (see ``config.pattern_metric_name``)."""
    return f"{kind}/{pattern_metric_name(pattern)}"


def result_row(cfg: ExperimentConfig, round_index: int, results: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """One row of the test matrix: {"method", "train", "seed", "round", "results": {pattern: {acc, f1}}}."""
    return {"method": cfg.method.name, "train": cfg.missing.label(), "seed": cfg.seed, "round": round_index,
            "results": results or {}}


def matrix_table(rows: list[dict[str, Any]], patterns: list[str], title: str = "Test matrix (accuracy / macro-F1)") -> Table:
    """rows: {"method", "train", "seed", "round", "results": {pattern: {acc, f1}}}."""
    table = Table(title=title)
    for col in ("method", "train missing", "seed", "round"):
        table.add_column(col)
    for p in patterns:
        table.add_column(p, justify="right")
    for row in rows:
        cells = []
        for p in patterns:
            r = row["results"].get(p)
            cells.append("-" if r is None else f"{100 * r['acc']:.1f} / {100 * r['f1']:.1f}")
        table.add_row(str(row["method"]), str(row["train"]), str(row.get("seed", "")), str(row.get("round", "")), *cells)
    return table


def matrix_records(rows: list[dict[str, Any]], patterns: list[str]) -> dict[str, list]:
    """Column-oriented table (for mlflow.log_table and JSON)."""
    out: dict[str, list] = {"method": [], "train": [], "seed": [], "round": [], "test_pattern": [], "acc": [], "f1": []}
    for row in rows:
        for p in patterns:
            r = row["results"].get(p)
            if r is None:
                continue
            for key, val in (("method", row["method"]), ("train", row["train"]), ("seed", row.get("seed")),
                             ("round", row.get("round")), ("test_pattern", p), ("acc", r["acc"]), ("f1", r["f1"])):
                out[key].append(val)
    return out


def plot_history(history: list[dict[str, Any]], patterns: list[str], title: str):
    """Accuracy vs round, one line per test pattern. history: [{"round", "eval": {pattern: {acc}}}]."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for p in patterns:
        pts = [(h["round"], h["eval"][p]["acc"]) for h in history if h.get("eval") and p in h["eval"]]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=p)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
