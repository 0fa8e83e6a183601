"""In-process round loop: the embedded default engine.

Each round runs the five steps in order and then checkpoints the state to the artifact store,
so a run that is stopped (or killed) continues from its last completed round, with the same
result as an uninterrupted run: all randomness is derived from (seed, round, client).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmfl.config import ExperimentConfig
from mmfl.data.missing import eval_patterns
from mmfl.engine import steps
from mmfl.engine.checkpoint import metrics_history, resume_point, round_prefix, save_round
from mmfl.engine.robust import RoundFailedError, clients_summary, record_round_clients
from mmfl.io.store import ArtifactStore, open_store
from mmfl.io.tracking import NullTracker, open_tracker
from mmfl.report import matrix_records, metric_key, plot_history, training_setting

log = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    experiment_id: str
    run_id: str | None
    rounds_done: int
    final: dict[str, dict[str, float]] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    resumed_from: int = 0

    def row(self, cfg: ExperimentConfig) -> dict[str, Any]:
        return {"method": cfg.method.name, "train": training_setting(cfg.missing.model_dump()), "seed": cfg.seed,
                "round": self.rounds_done, "results": self.final or {}}


def round_metrics(state_round: int, history_entry: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, float]:
    out = {"train_loss": history_entry["train_loss"]}
    for pattern, vals in (evaluation or {}).items():
        out[metric_key("acc", pattern)] = vals["acc"]
        out[metric_key("f1", pattern)] = vals["f1"]
    return out


def run_experiment(
    cfg: ExperimentConfig,
    store: ArtifactStore | None = None,
    tracker: Any = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> ExperimentResult:
    """Run (or resume) one experiment to ``cfg.train.rounds`` rounds; ``stop_after`` stops early."""
    store = store or open_store(cfg.storage.kind, cfg.storage.root, cfg.storage.bucket, cfg.storage.endpoint, cfg.storage.secure)
    tracker = tracker or open_tracker(cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment)
    exp_id = cfg.experiment_id()
    steps.apply_execution_settings(cfg)
    data = steps.prepare_data(cfg)
    patterns = eval_patterns(data.spec.names, cfg.eval.patterns)
    shards = dict(enumerate(data.clients))

    found = resume_point(store, exp_id)
    if found is None:
        state = steps.init_state(cfg, data.spec)
        save_round(store, exp_id, state, {"eval": None})
        store.put_json(f"{exp_id}/config.json", cfg.model_dump(mode="json"))
        start = 0
    else:
        start, state = found
        log.info("resuming %s from round %d", exp_id, start)

    run_key = f"{exp_id}/tracking.json"
    previous_run = store.get_json(run_key).get("run_id") if store.exists(run_key) else None
    run_id = tracker.start(
        run_name=f"{cfg.name}/{cfg.method.name}/s{cfg.seed}",
        params=cfg.model_dump(mode="json"),
        tags={"mmfl.experiment_id": exp_id, "mmfl.method": cfg.method.name,
              "mmfl.train_missing": training_setting(cfg.missing.model_dump()), "mmfl.engine": "local"},
        run_id=previous_run,
    )
    if run_id and run_id != previous_run:
        store.put_json(run_key, {"run_id": run_id, "tracking_uri": getattr(tracker, "uri", None)})

    last = cfg.train.rounds if stop_after is None else min(cfg.train.rounds, stop_after)
    status = "FAILED"
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), disable=not progress) as bar:
            task = bar.add_task(f"{cfg.name} {cfg.method.name}", total=cfg.train.rounds, completed=start, info="")
            for r in range(start + 1, last + 1):
                clients = steps.sample_clients(cfg, r)
                updates = steps.client_train(cfg, state, shards, clients)
                updates = steps.upload_prototypes(cfg, state, shards, updates)
                try:
                    state = steps.aggregate(cfg, state, updates, expected_clients=clients)
                except RoundFailedError as exc:
                    record_round_clients(tracker, r, exc.summary)
                    raise
                summary = clients_summary(state)
                state = steps.schedule(cfg, state)
                evaluation = steps.evaluate(cfg, state, data.test) if steps.should_evaluate(cfg, r) else None
                save_round(store, exp_id, state, {"eval": evaluation, "train_loss": state.meta["history"][-1]["train_loss"],
                                                  "clients": summary})
                tracker.log_metrics(round_metrics(r, state.meta["history"][-1], evaluation), step=r)
                record_round_clients(tracker, r, summary)
                info = f"loss {state.meta['history'][-1]['train_loss']:.3f}"
                if evaluation:
                    info += f"  acc(full) {evaluation['full']['acc']:.3f}" if "full" in evaluation else ""
                bar.update(task, completed=r, info=info)
                if progress and evaluation and not bar.console.is_terminal:
                    bar.console.print(f"  round {r}/{cfg.train.rounds}: {info}")  # progress in plain logs too
        status = "FINISHED" if last == cfg.train.rounds else "RUNNING"
    finally:
        if status != "RUNNING":
            tracker.finish(status)

    history = metrics_history(store, exp_id)
    final = history[-1]["eval"] if history and history[-1]["round"] == cfg.train.rounds else None
    result = ExperimentResult(exp_id, run_id, state.round, final, history, patterns, resumed_from=start)
    if final is not None and not isinstance(tracker, NullTracker):
        title = f"{cfg.method.name} — train {training_setting(cfg.missing.model_dump())}"
        tracker.log_table(matrix_records([result.row(cfg)], patterns), "test_matrix.json")
        tracker.log_dict({"experiment_id": exp_id, "final": final, "store": repr(store),
                          "checkpoint": round_prefix(exp_id, state.round)}, "result.json")
        fig = plot_history(history, patterns, title)
        tracker.log_figure(fig, "accuracy_vs_round.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
    return result
