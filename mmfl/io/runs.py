"""Experiment runs as the report sees them (``comparison.Run``), and a comparison logged as its own run.

A ``Run`` comes from an experiment's MLflow run (``experiment_runs``, ``run_records``: what
``mmfl report`` and a comparison parent run read) or from its checkpoints in the store
(``stored_run``: what the benchmark pipeline's comparison reads, tracking or not). Both take the
result-changing settings from the same flat params (``run_params``, flattened as the tracker logs
them), so the two readers group the same experiments alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmfl.comparison import Run
from mmfl.config import ExperimentConfig, is_result_setting, pattern_of_metric
from mmfl.errors import MmflError
from mmfl.io.tracking import MLFLOW_HTTP_ENV, default_tracking_uri, flatten, safe_uri, unreachable
from mmfl.redact import redact_uri

if TYPE_CHECKING:  # the store (and torch) only where a run is read from it: `mmfl report` starts without torch
    from mmfl.io.store import ArtifactStore

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


def run_params(cfg: ExperimentConfig) -> dict[str, Any]:
    """An experiment run's params (nested; the tracker flattens them): the config, the method's
    local budget (``budget.*``) and the shared settings it overrides (``override.*``)."""
    from mmfl.methods import training_budget

    budget, overrides = training_budget(cfg)
    return {**cfg.model_dump(mode="json"), "budget": budget, "override": overrides}


def _budget(params: Mapping[str, str]) -> dict[str, str]:
    return {k[len("budget."):]: v for k, v in params.items() if k.startswith("budget.")}


def _overrides(params: Mapping[str, str]) -> dict[str, str]:
    return {k[len("override."):]: v for k, v in params.items() if k.startswith("override.") and v != "{}"}


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
        budget=_budget(params), overrides=_overrides(params),
        experiment_id=tags.get(EXPERIMENT_TAG, ""), start_time=int(run.info.start_time or 0),
    )


def stored_run(store: ArtifactStore, cfg: ExperimentConfig, round_index: int, run_id: str = "") -> Run:
    """The experiment ``cfg`` after round ``round_index`` (its last) as the report sees it, read from
    its checkpoints in ``store``, no MLflow needed (``run_id``: its MLflow run, if known; else the
    experiment id).

    Results: that round's evaluation; curves: accuracy per evaluated round (each round's
    ``metrics.json``); costs: the deterministic ones of the round history (bytes, client updates,
    client counters; summed over rounds as the report sums the logged ``cost/*``). Wall time and
    peak memory are measured by the running process and logged to MLflow only, so a stored run has
    no ``round_wall_s`` (hence no wall time or client updates per second) and no ``peak_*``.
    """
    from mmfl.io.layout import load_round, metrics_history

    exp_id = cfg.experiment_id()
    state, metrics = load_round(store, exp_id, round_index)
    final = metrics.get("eval") or {}
    results = {p: {k: float(v[k]) for k in ("acc", "f1") if k in v} for p, v in final.items() if "acc" in v}
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in metrics_history(store, exp_id, upto=round_index):
        for pattern, vals in (entry.get("eval") or {}).items():
            if "acc" in vals:
                curves.setdefault(pattern, []).append((int(entry["round"]), float(vals["acc"])))
    costs: dict[str, float] = {}
    for entry in state.meta.get("history", []):
        for name, value in (entry.get("costs") or {}).items():
            costs[name] = costs.get(name, 0.0) + float(value)
    params = flatten(run_params(cfg))
    return Run(run_id=run_id or exp_id, method=cfg.method.name, seed=cfg.seed, settings=result_settings(params),
               results=results, curves=curves, costs=costs, rounds=cfg.train.rounds, budget=_budget(params),
               overrides=_overrides(params), experiment_id=exp_id)


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
