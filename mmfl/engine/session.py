"""One experiment's life in the artifact store and the tracker, shared by every driver.

The local engine (``mmfl/local.py``) and the pipeline tasks (``mmfl/kfp/tasks.py``) run rounds
differently (one process, or one pod per step) but record them the same way, through this
session, in the manner of training-process callbacks:

    begin(spec)            -> the resume point: the newest complete round, or the initial state (saved)
    open_run()             -> the experiment's MLflow run, opened or resumed (its id kept in the store)
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
from mmfl.engine import steps
from mmfl.engine.costs import cost_metrics, peak_memory
from mmfl.engine.robust import clients_summary, record_round_clients
from mmfl.io import ArtifactStore
from mmfl.io.layout import config_key, metrics_history, resume_point, round_prefix, save_round, tracking_key
from mmfl.io.tracking import NullTracker, open_tracker
from mmfl.methods import training_budget
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


class ExperimentSession:
    """The store and tracker side of one experiment (``engine``: ``local`` or ``kfp``, a run tag)."""

    def __init__(self, cfg: ExperimentConfig, store: ArtifactStore, tracker: Any = None, engine: str = "local",
                 tags: dict[str, str] | None = None):
        self.cfg, self.store, self.engine = cfg, store, engine
        self.tags = dict(tags or {})  # extra run tags, e.g. the KFP run that drives this segment
        self.exp_id = cfg.experiment_id()
        self._tracker = tracker
        self._mark: float | None = None  # wall clock of this process's last round boundary

    def budget_params(self) -> dict[str, Any]:
        """The method's local budget and the shared settings it overrides, as run params."""
        budget, overrides = training_budget(self.cfg)
        return {"budget": budget, "override": overrides}

    # ---- store ------------------------------------------------------------------------------
    def begin(self, spec: DataSpec) -> tuple[int, RoundState]:
        """(rounds already done, state to continue from); a new experiment's initial state is saved."""
        found = resume_point(self.store, self.exp_id)
        if found is not None:
            log.info("resuming %s from round %d", self.exp_id, found[0])
            self._mark = time.time()
            return found
        state = steps.init_state(self.cfg, spec)
        save_round(self.store, self.exp_id, state, {"eval": None})
        self.store.put_json(config_key(self.exp_id), self.cfg.model_dump(mode="json"))
        self._mark = time.time()
        return 0, state

    # ---- tracker ----------------------------------------------------------------------------
    @property
    def tracker(self) -> Any:
        if self._tracker is None:
            t = self.cfg.tracking
            self._tracker = open_tracker(t.enabled, t.uri, t.experiment)
        return self._tracker

    def open_run(self) -> str | None:
        """Open this experiment's run (one per experiment, its id kept in the store; created if absent)."""
        tracker = self.tracker
        if isinstance(tracker, NullTracker):
            return None
        key = tracking_key(self.exp_id)
        previous = self.store.get_json(key) if self.store.exists(key) else {}
        cfg = self.cfg
        run_id = tracker.start(
            run_name=f"{cfg.name}/{cfg.method.name}/s{cfg.seed}",
            params={**cfg.model_dump(mode="json"), **self.budget_params()},
            tags={"mmfl.experiment_id": self.exp_id, "mmfl.method": cfg.method.name,
                  "mmfl.train_missing": cfg.missing.label(), "mmfl.engine": self.engine, **self.tags},
            run_id=previous.get("run_id"),
        )
        if run_id and run_id != previous.get("run_id"):
            self.store.put_json(key, {"run_id": run_id, "tracking_uri": getattr(tracker, "uri", None)})
        return run_id

    # ---- rounds -----------------------------------------------------------------------------
    def after_round(self, state: RoundState, evaluation: dict[str, Any] | None) -> None:
        """Log the round, then commit its checkpoint (a retried task logs again, never loses a round)."""
        last = state.meta["history"][-1]
        summary = clients_summary(state)
        self.tracker.log_metrics({**round_metrics(last, evaluation), **self.round_cost_metrics(last)}, step=state.round)
        record_round_clients(self.tracker, state.round, summary)
        save_round(self.store, self.exp_id, state, {"eval": evaluation, "train_loss": last["train_loss"], "clients": summary,
                                                    **{k: last[k] for k in steps.EFFICIENCY_METRICS if k in last}})

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

    def history(self) -> list[dict[str, Any]]:
        return metrics_history(self.store, self.exp_id)

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
        if final is not None and not isinstance(tracker, NullTracker):
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
