"""Every key of the artifact store, and how a run finds where to resume.

Layout under ``<experiment_id>/`` (the local engine and the pipeline tasks share it, so either can
resume the other's run):
    config.json, manifest.json, tracking.json                                 the settings; the MLflow run
    run.lock (local store) or lease.json (S3)                                 one run at a time (io/lock.py)
    data/spec.json, data/client_00007.safetensors, data/test.safetensors    prepared data (spec last)
    data/sizes.json                                                           shard sizes (caps claimed counts)
    rounds/00000/state.*                                                      initial state
    rounds/00003/state.*, rounds/00003/metrics.json                            after round 3
    rounds/00003/updates/client_00007/update.*                                 client_train output (KFP)
    rounds/00003/uploads/client_00007/update.*                                 upload_prototypes output (KFP)
    rounds/00003/steps/aggregate/state.*, steps/schedule/state.*               server step outputs (KFP)
A round is complete once its ``metrics.json`` exists: it is written last, after the state.
"""

from __future__ import annotations

import logging
from typing import Any

from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.errors import ArtifactError
from mmfl.io.store import ArtifactStore
from mmfl.state import RoundState

log = logging.getLogger(__name__)


def round_prefix(exp_id: str, round_index: int) -> str:
    return f"{exp_id}/rounds/{round_index:05d}"


def config_key(exp_id: str) -> str:
    return f"{exp_id}/config.json"


def manifest_key(exp_id: str) -> str:
    """Every setting the experiment's rounds were computed with (``mmfl/engine/identity.py``)."""
    return f"{exp_id}/manifest.json"


def tracking_key(exp_id: str) -> str:
    """The experiment's MLflow run id (and whether the run was finalized)."""
    return f"{exp_id}/tracking.json"


def client_key(exp_id: str, round_index: int, kind: str, client_id: int) -> str:
    return f"{round_prefix(exp_id, round_index)}/{kind}/client_{client_id:05d}"


def step_key(exp_id: str, round_index: int, step: str) -> str:
    return f"{round_prefix(exp_id, round_index)}/steps/{step}"


def data_key(exp_id: str, name: str) -> str:
    return f"{exp_id}/data/{name}"


def load_spec(store: ArtifactStore, exp_id: str) -> DataSpec:
    return DataSpec.from_json(store.get_json(data_key(exp_id, "spec.json")))


def load_shards(store: ArtifactStore, exp_id: str, client_ids: list[int]) -> dict[int, MultimodalDataset]:
    spec = load_spec(store, exp_id)
    return {cid: MultimodalDataset.from_tensors(spec, store.get_tensors(data_key(exp_id, f"client_{cid:05d}.safetensors")))
            for cid in client_ids}


def load_test(store: ArtifactStore, exp_id: str) -> MultimodalDataset:
    return MultimodalDataset.from_tensors(load_spec(store, exp_id), store.get_tensors(data_key(exp_id, "test.safetensors")))


def save_round(store: ArtifactStore, exp_id: str, state: RoundState, metrics: dict[str, Any]) -> None:
    prefix = round_prefix(exp_id, state.round)
    store.put_state(prefix, state)
    store.put_json(f"{prefix}/metrics.json", {"round": state.round, **metrics})


def completed_rounds(store: ArtifactStore, exp_id: str) -> list[int]:
    rounds = set()
    for key in store.list(f"{exp_id}/rounds"):
        parts = key.split("/")
        if parts[-1] == "metrics.json" and parts[-2].isdigit():
            rounds.add(int(parts[-2]))
    return sorted(rounds)


def latest_round(store: ArtifactStore, exp_id: str) -> int | None:
    done = completed_rounds(store, exp_id)
    return done[-1] if done else None


def load_metrics(store: ArtifactStore, exp_id: str, round_index: int) -> dict[str, Any]:
    """A round's ``metrics.json`` alone (no tensors are read)."""
    return store.get_json(f"{round_prefix(exp_id, round_index)}/metrics.json")


def load_round(store: ArtifactStore, exp_id: str, round_index: int) -> tuple[RoundState, dict[str, Any]]:
    return store.get_state(round_prefix(exp_id, round_index)), load_metrics(store, exp_id, round_index)


def metrics_history(store: ArtifactStore, exp_id: str, upto: int | None = None) -> list[dict[str, Any]]:
    """Per-round metrics of every completed training round (round 0, the initial state, excluded), up to ``upto``."""
    return [load_metrics(store, exp_id, r) for r in completed_rounds(store, exp_id)
            if r > 0 and (upto is None or r <= upto)]


def first_damaged_round(store: ArtifactStore, exp_id: str) -> int | None:
    """The earliest completed round whose ``metrics.json`` cannot be read, or None."""
    for round_index in completed_rounds(store, exp_id):
        try:
            metrics = load_metrics(store, exp_id, round_index)
            if not isinstance(metrics, dict) or metrics.get("round") != round_index:
                raise ArtifactError(f"metrics.json of round {round_index} holds round "
                                    f"{metrics.get('round') if isinstance(metrics, dict) else metrics!r}")
        except ArtifactError as exc:
            log.warning("round %d is damaged, it and the rounds after it are recomputed: %s", round_index, exc)
            return round_index
    return None


def resume_point(store: ArtifactStore, exp_id: str) -> tuple[int, RoundState] | None:
    """The newest round whose checkpoint is complete *and* readable, with its state.

    A round counts only once its ``metrics.json`` exists (written last), so a run killed while
    writing round k resumes from k - 1. A complete-looking round that cannot be read (damaged by
    something outside mmfl) is skipped with a warning and recomputed from the round before; a
    damaged ``metrics.json`` of a middle round is treated the same way (every round after it is
    recomputed, which gives the same bytes: all randomness derives from seed, round and client).
    """
    damaged = first_damaged_round(store, exp_id)
    for round_index in reversed(completed_rounds(store, exp_id)):
        if damaged is not None and round_index >= damaged:
            continue
        try:
            state, _ = load_round(store, exp_id, round_index)
        except ArtifactError as exc:
            log.warning("checkpoint of round %d is unreadable, trying the round before: %s", round_index, exc)
            continue
        if state.round != round_index:
            log.warning("checkpoint of round %d holds round %d; trying the round before", round_index, state.round)
            continue
        return round_index, state
    return None
