"""Read finished runs back from MLflow for ``mmfl report``."""

from __future__ import annotations

import os
from typing import Any

from mmfl.config import pattern_of_metric
from mmfl.errors import MmflError
from mmfl.io.tracking import MLFLOW_HTTP_ENV, default_tracking_uri, safe_uri, unreachable
from mmfl.redact import redact_uri


def latest_runs(uri: str | None, experiment: str, limit: int = 20) -> tuple[list[dict[str, Any]], list[str]]:
    """Newest finished run per (method, training setting, seed), with its final test matrix."""
    from mlflow.tracking import MlflowClient

    target = safe_uri(uri or default_tracking_uri())
    problem = unreachable(target)
    if problem is not None:
        raise MmflError(f"tracking server {redact_uri(target)} unreachable ({problem})")
    for name, value in MLFLOW_HTTP_ENV.items():
        os.environ.setdefault(name, value)
    client = MlflowClient(tracking_uri=target)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=500)
    rows, seen, patterns = [], set(), []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        key = (tags.get("mmfl.method"), tags.get("mmfl.train_missing"), params.get("seed"), params.get("data.name"))
        if key in seen:
            continue
        seen.add(key)
        results: dict[str, dict[str, float]] = {}
        for name, value in run.data.metrics.items():
            kind, _, suffix = name.partition("/")
            pattern = pattern_of_metric(suffix)
            if kind in ("acc", "f1") and pattern:
                results.setdefault(pattern, {})[kind] = value
                if pattern not in patterns:
                    patterns.append(pattern)
        rows.append({"method": key[0], "train": key[1], "seed": key[2], "round": params.get("train.rounds"),
                     "results": {p: r for p, r in results.items() if "acc" in r and "f1" in r}})
        if len(rows) >= limit:
            break
    patterns.sort(key=_column_order)
    return rows, patterns


def _column_order(pattern: str) -> tuple[int, str]:
    """full, then ~train, then the drawn patterns, then only:<m>."""
    rank = 0 if pattern == "full" else 1 if pattern == "~train" else 3 if pattern.startswith("only:") else 2
    return rank, pattern
