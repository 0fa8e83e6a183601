"""Rounds in one process: the five steps in order, each round recorded by the experiment session.

The local driver (``mmfl/local.py``) runs whole experiments with it and a progress bar; a
pipeline task that runs a whole experiment (a benchmark cell) uses it without one. A run that is
stopped (or killed) continues from its last completed round with the same result as an
uninterrupted run: all randomness is derived from (seed, round, client).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmfl.config import ExperimentConfig
from mmfl.data import FederatedData
from mmfl.data.limits import check_partition_limits
from mmfl.data.missing import eval_patterns
from mmfl.engine import identity, steps
from mmfl.engine.robust import RoundFailedError, record_round_clients
from mmfl.engine.session import ExperimentSession
from mmfl.io import ArtifactStore, store_of
from mmfl.io.lock import experiment_lock
from mmfl.methods import resolve
from mmfl.results import result_row

log = logging.getLogger(__name__)

# Called after each round with (round, state, evaluation or None); also once before the first
# round with (rounds already done, state, None).
RoundCallback = Callable[[int, Any, dict[str, Any] | None], None]


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
        return result_row(cfg, self.rounds_done, self.final)


def run_experiment(
    cfg: ExperimentConfig,
    store: ArtifactStore | None = None,
    tracker: Any = None,
    on_round: RoundCallback | None = None,
    stop_after: int | None = None,
    engine: str = "local",
    data: FederatedData | None = None,
    tags: dict[str, str] | None = None,
    new_experiment: bool = False,
) -> ExperimentResult:
    """Run (or resume) one experiment to ``cfg.train.rounds`` rounds; ``stop_after`` stops early.

    ``data`` is the prepared data when the caller has it (a pipeline task reads the shards from the
    store); ``tags`` are added to the experiment's run (e.g. the KFP run that trains these rounds).
    A store that holds the experiment with other result settings refuses the run (ConfigError
    naming the fields) unless ``new_experiment`` starts a separate one; another process running
    the same experiment stops this one (``ExperimentBusy``).
    """
    resolve(cfg)
    for warning in check_partition_limits(cfg):  # errors before any data is read or a run opened
        log.warning(warning)
    if new_experiment:
        cfg = identity.new_experiment(cfg)
    store = store or store_of(cfg.storage)
    with experiment_lock(store, cfg.experiment_id()):
        return _run_locked(cfg, store, tracker, on_round, stop_after, engine, data, tags)


def _run_locked(cfg: ExperimentConfig, store: ArtifactStore, tracker: Any, on_round: RoundCallback | None,
                stop_after: int | None, engine: str, data: FederatedData | None,
                tags: dict[str, str] | None) -> ExperimentResult:
    session = ExperimentSession(cfg, store, tracker, engine=engine, tags=tags)
    steps.apply_execution_settings(cfg)
    data = data if data is not None else steps.prepare_data(cfg)
    patterns = eval_patterns(data.spec.names, cfg.eval.patterns)
    shards = data.clients  # built per client when a round samples it
    sizes = {cid: shards.size(cid) for cid in range(len(shards))}  # known without building the shards
    start, state = session.begin(data.spec)
    if start:
        session.evaluate_missing(data.test, start)
    run_id = session.open_run()
    if on_round is not None:
        on_round(start, state, None)
    last = cfg.train.rounds if stop_after is None else min(cfg.train.rounds, stop_after)
    try:
        for r in range(start + 1, last + 1):
            clients = steps.sample_clients(cfg, r)
            updates = steps.client_train(cfg, state, shards, clients)
            updates = steps.upload_prototypes(cfg, state, shards, updates)
            try:
                state = steps.aggregate(cfg, state, updates, expected_clients=clients, shard_sizes=sizes)
            except RoundFailedError as exc:
                record_round_clients(session.tracker, r, exc.summary)
                raise
            state = steps.schedule(cfg, state)
            evaluation = steps.evaluate(cfg, state, data.test) if steps.should_evaluate(cfg, r) else None
            session.after_round(state, evaluation)
            if on_round is not None:
                on_round(r, state, evaluation)
    except BaseException:
        session.tracker.finish("FAILED")
        raise
    if last == cfg.train.rounds:
        session.end(data.spec)
    history = session.history(upto=state.round)
    final = history[-1]["eval"] if history and history[-1]["round"] == cfg.train.rounds else None
    return ExperimentResult(session.exp_id, run_id, state.round, final, history, patterns, resumed_from=start)
