"""Read experiment runs back from MLflow for ``mmfl report``, and log a comparison as its own run."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmfl.comparison import Run
from mmfl.config import ExperimentConfig, is_result_setting, pattern_of_metric
from mmfl.errors import MmflError
from mmfl.io.tracking import MLFLOW_HTTP_ENV, default_tracking_uri, safe_uri, unreachable
from mmfl.redact import redact_uri

EXPERIMENT_TAG = "mmfl.experiment_id"  # set on every experiment's run (engine/session.py)
KIND_TAG = "mmfl.kind"
COMPARISON_KIND = "comparison"
_SECTIONS = set(ExperimentConfig.model_fields)


def _client(uri: str | None):
    from mlflow.tracking import MlflowClient

    target = safe_uri(uri or default_tracking_uri())
    problem = unreachable(target)
    if problem is not None:
        raise MmflError(f"tracking server {redact_uri(target)} unreachable ({problem})")
    for name, value in MLFLOW_HTTP_ENV.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=target)


def result_settings(params: Mapping[str, str]) -> dict[str, str]:
    """The logged config params that change results (the experiment id's), without seed and name."""
    return {k: v for k, v in params.items()
            if k.split(".", 1)[0] in _SECTIONS and k not in ("seed", "name") and is_result_setting(k)}


def _by_step(history) -> dict[int, float]:
    """Last value per step (a retried task may log a round twice)."""
    out: dict[int, tuple[int, float]] = {}
    for m in history:
        if m.step not in out or m.timestamp >= out[m.step][0]:
            out[m.step] = (m.timestamp, m.value)
    return {s: v for s, (_, v) in sorted(out.items())}


def _run_record(client, run) -> Run:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    results: dict[str, dict[str, float]] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    costs: dict[str, float] = {}
    for name, value in metrics.items():
        kind, _, rest = name.partition("/")
        if kind in ("acc", "f1") and rest:
            pattern = pattern_of_metric(rest)
            results.setdefault(pattern, {})[kind] = value
            if kind == "acc":
                curves[pattern] = list(_by_step(client.get_metric_history(run.info.run_id, name)).items())
        elif kind == "cost" and rest:
            steps = _by_step(client.get_metric_history(run.info.run_id, name))
            costs[rest] = max(steps.values()) if rest.startswith("peak_") else sum(steps.values())
    try:
        seed = int(params.get("seed", "0"))
    except ValueError:
        seed = 0
    return Run(
        run_id=run.info.run_id, method=tags.get("mmfl.method") or params.get("method.name", "?"), seed=seed,
        settings=result_settings(params), results={p: r for p, r in results.items() if "acc" in r},
        curves=curves, costs=costs, rounds=int(params.get("train.rounds", "0") or 0),
        budget={k[len("budget."):]: v for k, v in params.items() if k.startswith("budget.")},
        overrides={k[len("override."):]: v for k, v in params.items() if k.startswith("override.") and v != "{}"},
        experiment_id=tags.get(EXPERIMENT_TAG, ""), start_time=int(run.info.start_time or 0),
    )


def run_records(client, run_ids: list[str]) -> list[Run]:
    """The runs ``run_ids`` (an ``MlflowClient``'s) as the report sees them."""
    return [_run_record(client, client.get_run(run_id)) for run_id in run_ids]


def experiment_runs(uri: str | None, experiment: str) -> tuple[list[Run], dict[str, int]]:
    """Every finished experiment run of ``experiment`` (all pages), and counts of those left out by kind."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], {}
    runs, unfinished, token = [], 0, None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=f"tags.`{EXPERIMENT_TAG}` != ''",
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        for run in page:
            if run.info.status != "FINISHED":
                unfinished += 1
            elif run.data.metrics:
                runs.append(_run_record(client, run))
        token = page.token
        if not token:
            break
    return runs, {"unfinished or failed runs": unfinished}


def log_comparison(uri: str | None, experiment: str, files: Mapping[str, str], figures: Mapping[str, Any],
                   table: Mapping[str, list], params: Mapping[str, str], name: str = "comparison") -> str:
    """One MLflow run holding a comparison: the table (also as an MLflow table), its files and plots."""
    from mlflow.entities import Param

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=name, tags={KIND_TAG: COMPARISON_KIND})
    run_id = run.info.run_id
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_table(run_id, data=dict(table), artifact_file="comparison.json")
    for file, text in files.items():
        client.log_text(run_id, text, Path(file).name)
    for file, fig in figures.items():
        client.log_figure(run_id, fig, Path(file).name)
    with contextlib.redirect_stdout(sys.stderr):  # mlflow prints the run's URL; stdout carries the report
        client.set_terminated(run_id, "FINISHED")
    return run_id
