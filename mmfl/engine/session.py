"""One experiment's life in the artifact store and the tracker, shared by every driver.

The local engine (``mmfl/local.py``) and the pipeline tasks (``mmfl/kfp/tasks.py``) run rounds
differently (one process, or one pod per step) but record them the same way, through this
session, in the manner of training-process callbacks:

    check_identity()       -> a re-run with other result settings than the stored ones is refused
    begin(spec)            -> the resume point: the newest complete round, or the initial state (saved)
    evaluate_missing(...)  -> patterns the eval settings now ask for, evaluated on stored checkpoints
    open_run()             -> the experiment's MLflow run, opened or resumed (its id kept in the store),
                              with the stored rounds it lacks replayed
    after_round(state, e)  -> metrics logged, then the round checkpointed (metrics.json last)
    end(spec)              -> the test matrix, result and accuracy plot in the run; the run finished

Because the run id lives in the store, a run started by one driver is continued by the other.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec
from mmfl.data.missing import eval_patterns
from mmfl.engine import identity, steps
from mmfl.engine.costs import cost_metrics, peak_memory
from mmfl.engine.robust import clients_summary, record_round_clients, round_client_metrics
from mmfl.io import ArtifactStore
from mmfl.io.layout import (completed_rounds, config_key, load_metrics, load_round, manifest_key, metrics_history,
                            resume_point, round_prefix, save_round, tracking_key)
from mmfl.io.runs import run_params
from mmfl.io.tracking import SafeTracker, attach_run, open_tracker
from mmfl.results import matrix_records, metric_key, plot_history, result_row
from mmfl.state import RoundState

log = logging.getLogger(__name__)


def round_metrics(history_entry: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, float]:
    """What a round logs: the mean training loss and accuracy / macro-F1 of each evaluated test pattern."""
    out = {"train_loss": history_entry["train_loss"]}
    out.update({k: history_entry[k] for k in steps.EFFICIENCY_METRICS if k in history_entry})
    for pattern, vals in (evaluation or {}).items():
        out[metric_key("acc", pattern)] = vals["acc"]
        out[metric_key("f1", pattern)] = vals["f1"]
    return out


def stored_round_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """What was logged for a round, rebuilt from its ``metrics.json`` (to replay it to a tracker)."""
    out = round_metrics({"train_loss": entry.get("train_loss", float("nan"))}, entry.get("eval"))
    if entry.get("clients"):
        out.update(round_client_metrics(entry["clients"]))
    return out


class ExperimentSession:
    """The store and tracker side of one experiment (``engine``: ``local`` or ``kfp``, a run tag)."""

    def __init__(self, cfg: ExperimentConfig, store: ArtifactStore, tracker: Any = None, engine: str = "local",
                 tags: dict[str, str] | None = None):
        self.cfg, self.store, self.engine = cfg, store, engine
        self.tags = dict(tags or {})  # extra run tags, e.g. the KFP run that drives this segment
        self.exp_id = cfg.experiment_id()
        self._tracker = tracker if tracker is None or isinstance(tracker, SafeTracker) else SafeTracker(tracker)
        self.start: int | None = None  # rounds done when the run began (None: not begun here, e.g. a pipeline task)
        self._late: dict[int, dict[str, Any]] = {}
        self._mark: float | None = None  # wall clock of this process's last round boundary

    # ---- identity ---------------------------------------------------------------------------
    def check_identity(self) -> None:
        """Refuse other result settings than the stored experiment's (ConfigError naming the fields);
        store the manifest of the current settings (eval and tracking changes are honoured)."""
        key, legacy = manifest_key(self.exp_id), config_key(self.exp_id)
        stored = self.store.get_json(key) if self.store.exists(key) else (
            identity.legacy_manifest(self.store.get_json(legacy)) if self.store.exists(legacy) else None)
        if stored is not None:
            identity.refuse_if_different(stored, self.cfg, repr(self.store))
        current = identity.manifest(self.cfg)
        if stored != current:
            self.store.put_json(key, current)

    # ---- store ------------------------------------------------------------------------------
    def begin(self, spec: DataSpec) -> tuple[int, RoundState]:
        """(rounds already done, state to continue from); a new experiment's initial state is saved."""
        self.check_identity()
        found = resume_point(self.store, self.exp_id)
        if found is not None:
            log.info("resuming %s from round %d", self.exp_id, found[0])
            self.start = found[0]
            self._mark = time.time()
            return found
        self.start = 0
        state = steps.init_state(self.cfg, spec)
        save_round(self.store, self.exp_id, state, {"eval": None})
        self.store.put_json(config_key(self.exp_id), self.cfg.model_dump(mode="json"))
        self._mark = time.time()
        return 0, state

    def evaluate_missing(self, test: Any, upto: int) -> dict[int, dict[str, Any]]:
        """Evaluate, on the stored checkpoints, what rounds up to ``upto`` were not evaluated on.

        For a re-run with other ``eval`` settings (new patterns, a shorter ``eval.every``): the
        results are merged into each round's ``metrics.json`` and logged once the run is open.
        Returns {round: {pattern: metrics}}.
        """
        patterns = eval_patterns(test.spec.names, self.cfg.eval.patterns)
        added: dict[int, dict[str, Any]] = {}
        for r in completed_rounds(self.store, self.exp_id):
            if not 0 < r <= upto or not steps.should_evaluate(self.cfg, r):
                continue
            metrics = load_metrics(self.store, self.exp_id, r)
            missing = identity.missing_evaluations(metrics.get("eval"), patterns)
            if not missing:
                continue
            state, _ = load_round(self.store, self.exp_id, r)
            result = steps.evaluate(self.cfg, state, test)
            added[r] = {p: result[p] for p in missing}
            self.store.put_json(f"{round_prefix(self.exp_id, r)}/metrics.json",
                                {**metrics, "eval": {**(metrics.get("eval") or {}), **added[r]}})
            log.info("round %d: evaluated the stored checkpoint on %s", r, ", ".join(missing))
        self._late = added
        return added

    # ---- tracker ----------------------------------------------------------------------------
    @property
    def tracker(self) -> Any:
        if self._tracker is None:
            t = self.cfg.tracking
            self._tracker = open_tracker(t.enabled, t.uri, t.experiment)
        return self._tracker

    def open_run(self) -> str | None:
        """Open this experiment's run (one per experiment, its id kept in the store; created if absent).

        The run is reused only while the tracking URI and MLflow experiment are unchanged; every
        stored round the run lacks is replayed, and so are evaluations added by ``evaluate_missing``.
        """
        tracker = self.tracker
        if not tracker.active:
            return None
        key = tracking_key(self.exp_id)
        previous = self.store.get_json(key) if self.store.exists(key) else {}
        cfg = self.cfg
        attached = attach_run(
            tracker, previous, run_name=f"{cfg.name}/{cfg.method.name}/s{cfg.seed}",
            params=run_params(cfg),
            tags={"mmfl.experiment_id": self.exp_id, "mmfl.method": cfg.method.name,
                  "mmfl.train_missing": cfg.missing.label(), "mmfl.engine": self.engine, **self.tags},
            history=metrics_history(self.store, self.exp_id, upto=self.start), metrics_of=stored_round_metrics)
        if attached is None:
            return None
        for r, evaluation in sorted(self._late.items()):  # logged before these were evaluated
            tracker.log_metrics({metric_key(k, p): v[k] for p, v in evaluation.items() for k in ("acc", "f1")}, step=r)
        doc = {**previous, **attached} if attached["run_id"] == previous.get("run_id") else attached
        if doc != previous:
            self.store.put_json(key, doc)
        return attached["run_id"]

    # ---- rounds -----------------------------------------------------------------------------
    def after_round(self, state: RoundState, evaluation: dict[str, Any] | None) -> None:
        """Log the round, then commit its checkpoint (a retried task logs again, never loses a round)."""
        last = state.meta["history"][-1]
        summary = clients_summary(state)
        record_round_clients(self.tracker, state.round, summary,  # one tracker write per round
                             {**round_metrics(last, evaluation), **self.round_cost_metrics(last)})
        save_round(self.store, self.exp_id, state, {"eval": evaluation, "train_loss": last["train_loss"], "clients": summary,
                                                    **{k: last[k] for k in steps.EFFICIENCY_METRICS if k in last}})

    def history(self, upto: int | None = None) -> list[dict[str, Any]]:
        return metrics_history(self.store, self.exp_id, upto=upto)

    def round_cost_metrics(self, entry: dict[str, Any]) -> dict[str, float]:
        """The round's recorded costs, its wall time and the process's peak memory (``cost/*``)."""
        now = time.time()
        since = self._mark if self._mark is not None else self.tracker_time_of_previous_round(entry["round"])
        self._mark = now
        extra = dict(peak_memory())
        if since is not None:
            extra["round_wall_s"] = max(now - since, 0.0)
        return cost_metrics({**entry.get("costs", {}), **extra})

    def tracker_time_of_previous_round(self, round_index: int) -> float | None:
        """When the previous round was logged (a pipeline task's session starts mid-experiment)."""
        last = getattr(self.tracker, "last_logged", None)
        return last("train_loss", round_index - 1) if last is not None else None

    def final(self) -> dict[str, dict[str, float]] | None:
        """The last round's evaluation once every round is done, else None."""
        history = self.history()
        return history[-1]["eval"] if history and history[-1]["round"] == self.cfg.train.rounds else None

    # ---- end --------------------------------------------------------------------------------
    def finished(self) -> bool:
        key = tracking_key(self.exp_id)
        return self.store.exists(key) and bool(self.store.get_json(key).get("finished"))

    def end(self, spec: DataSpec, status: str = "FINISHED") -> None:
        """After the last round: the test matrix, result and accuracy plot in the run; the run finished."""
        tracker, cfg = self.tracker, self.cfg
        history = self.history()
        final = history[-1]["eval"] if history and history[-1]["round"] == cfg.train.rounds else None
        if final is not None and tracker.active:
            patterns = eval_patterns(spec.names, cfg.eval.patterns)
            tracker.log_table(matrix_records([result_row(cfg, cfg.train.rounds, final)], patterns), "test_matrix.json")
            tracker.log_dict({"experiment_id": self.exp_id, "final": final, "store": repr(self.store),
                              "checkpoint": round_prefix(self.exp_id, cfg.train.rounds)}, "result.json")
            fig = plot_history(history, patterns, f"{cfg.method.name} — train {cfg.missing.label()}")
            tracker.log_figure(fig, "accuracy_vs_round.png")
            import matplotlib.pyplot as plt

            plt.close(fig)
        tracker.finish(status)
        if final is not None:
            key = tracking_key(self.exp_id)
            doc = self.store.get_json(key) if self.store.exists(key) else {}
            self.store.put_json(key, {**doc, "finished": True})
