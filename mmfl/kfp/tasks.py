"""What each pipeline component does: read inputs from the store, call ONE round step, write outputs.

The components in ``components/`` are thin shells that call one function here. Keeping the glue
in the library means it is importable and testable without kfp, and the container image only
needs mmfl installed.

Store layout is the one of ``mmfl.io.layout`` so the local engine and the pipeline are
interchangeable (either can resume the other's run):

    <exp>/data/spec.json, data/client_00007.safetensors, data/test.safetensors, data/sizes.json
    <exp>/rounds/00003/state.*, metrics.json                 checkpoint after round 3 (metrics last)
    <exp>/rounds/00003/updates/client_00007/update.*         client_train output
    <exp>/rounds/00003/uploads/client_00007/update.*         upload_prototypes output
    <exp>/rounds/00003/steps/aggregate/state.*               aggregate output
    <exp>/rounds/00003/steps/schedule/state.*                schedule output

Every output is keyed by (experiment, round, step) and written with single-object puts, so a
retried task finds its earlier output and returns it instead of recomputing. A segment task for a
round that is already checkpointed, or beyond ``train.rounds``, does nothing.

Artifacts passed between tasks are small JSON manifests naming the store keys they refer to; the
tensors themselves stay in the store (MinIO in the cluster).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mmfl.config import ExperimentConfig, parse_config
from mmfl.data.dataset import DataSpec
from mmfl.data.shards import ClientShards
from mmfl.engine import steps
from mmfl.engine.session import ExperimentSession
from mmfl.errors import ArtifactError, ConfigError
from mmfl.io import ArtifactStore
from mmfl.io import store_of as open_storage
from mmfl.io.layout import (
    client_key,
    data_key,
    load_metrics,
    load_round,
    load_shards,
    load_spec,
    load_test,
    round_prefix,
    step_key,
    tracking_key,
)
from mmfl.kfp.runtime import setup_task
from mmfl.methods import resolve
from mmfl.state import ClientUpdate, RoundState


# --- configuration and store ------------------------------------------------------------------
def load_cfg(config_json: str) -> ExperimentConfig:
    try:
        data = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config_json: not valid JSON ({exc})") from None
    cfg = parse_config(data, source="config_json")
    resolve(cfg)
    return cfg


def store_of(cfg: ExperimentConfig) -> ArtifactStore:
    return open_storage(cfg.storage)


def round_of(start_round: int, offset: int) -> int:
    """Round trained by the task at position ``offset`` of a segment that starts after ``start_round``."""
    return start_round + offset + 1






def write_manifest(path: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The artifact file a task hands to the next one; returns metadata for the KFP UI."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(manifest, sort_keys=True, indent=1))
    return {k: v for k, v in manifest.items() if isinstance(v, (str, int, float, bool))}


def read_manifest(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"pipeline artifact {path!r}: not a readable manifest ({exc})") from None


def _manifest_round(path: str | None) -> int:
    if not path:
        raise ArtifactError("start_round < 0 needs the incoming artifact's manifest to know the round")
    return int(read_manifest(path)["round"])


def _round_status(cfg: ExperimentConfig, store: ArtifactStore, round_index: int) -> str | None:
    """'beyond' past the last round, 'done' if already checkpointed, else None (work to do)."""
    if round_index > cfg.train.rounds:
        return "beyond"
    if store.exists(f"{round_prefix(cfg.experiment_id(), round_index)}/metrics.json"):
        return "done"
    return None


def _open_round(config_json: str, round_index: int) -> tuple[ExperimentConfig, ArtifactStore, str, str | None]:
    """What every per-round task starts with: config, store, experiment id and the round's status."""
    cfg = load_cfg(config_json)
    setup_task(cfg)
    store = store_of(cfg)
    return cfg, store, cfg.experiment_id(), _round_status(cfg, store, round_index)


def _skip(path: str, exp_id: str, round_index: int, reason: str) -> dict[str, Any]:
    return write_manifest(path, {"experiment_id": exp_id, "round": round_index, "skipped": reason,
                                 "state": round_prefix(exp_id, round_index)})


# --- data shards in the store -------------------------------------------------------------------


def ensure_data(cfg: ExperimentConfig, store: ArtifactStore) -> DataSpec:
    """Write the prepared shards once; ``spec.json`` goes last and marks them complete."""
    exp_id = cfg.experiment_id()
    if store.exists(data_key(exp_id, "spec.json")):
        return DataSpec.from_json(store.get_json(data_key(exp_id, "spec.json")))
    data = steps.prepare_data(cfg)
    sizes = {}
    for cid, shard in enumerate(data.clients):
        store.put_tensors(data_key(exp_id, f"client_{cid:05d}.safetensors"), shard.to_tensors())
        sizes[str(cid)] = len(shard)
    store.put_tensors(data_key(exp_id, "test.safetensors"), data.test.to_tensors())
    store.put_json(data_key(exp_id, "sizes.json"), sizes)
    store.put_json(data_key(exp_id, "spec.json"), data.spec.to_json())
    return data.spec


def shard_sizes(store: ArtifactStore, exp_id: str, client_ids: list[int]) -> dict[int, int]:
    """Samples in each client's shard as the server wrote it (``sizes.json``; older stores: the shards)."""
    if store.exists(data_key(exp_id, "sizes.json")):
        sizes = store.get_json(data_key(exp_id, "sizes.json"))
        return {cid: int(sizes[str(cid)]) for cid in client_ids if str(cid) in sizes}
    return {cid: len(shard) for cid, shard in load_shards(store, exp_id, client_ids).items()}


def stored_shards(store: ArtifactStore, exp_id: str, num_clients: int) -> ClientShards:
    """Every client's shard in the store, read when a round samples the client; the sizes from
    ``sizes.json`` (so the server's shard sizes are known without reading any shard)."""
    ids = list(range(num_clients))
    sizes = shard_sizes(store, exp_id, ids)
    return ClientShards(num_clients, lambda k: load_shards(store, exp_id, [k])[k],
                        np.array([sizes[c] for c in ids]) if len(sizes) == num_clients else None)


def kfp_tags(run_id: str = "", run_name: str = "", pipeline_version: str = "") -> dict[str, str]:
    """MLflow tags naming the KFP run that drives a task (empty values are left out)."""
    tags = {"kfp.run_id": run_id, "kfp.run_name": run_name, "kfp.pipeline_version": pipeline_version}
    return {k: v for k, v in tags.items() if v and not v.startswith("{{")}  # an unresolved placeholder is no value


def session_of(cfg: ExperimentConfig, store: ArtifactStore, tags: dict[str, str] | None = None) -> ExperimentSession:
    """The experiment session (MLflow run, checkpoints) that the local engine uses too."""
    return ExperimentSession(cfg, store, engine="kfp", tags=tags)


def mlflow_link(session: ExperimentSession, run_id: str | None) -> str:
    """Markdown for the KFP UI: a link to the experiment's MLflow run (or why there is none)."""
    if not run_id:
        return f"# {session.exp_id}\n\nMLflow tracking is off for this experiment (`tracking.enabled: false`).\n"
    url = session.tracker.run_url(run_id)
    return (f"# {session.exp_id}\n\nMLflow run: [{run_id}]({url})\n\n"
            f"Tags: `mmfl.experiment_id={session.exp_id}`, " + ", ".join(f"`{k}={v}`" for k, v in session.tags.items()) + "\n")


# --- the tasks --------------------------------------------------------------------------------------
def prepare_task(config_json: str, checkpoint_path: str, link_path: str | None = None,
                 tags: dict[str, str] | None = None) -> tuple[int, int, dict[str, Any]]:
    """Data shards and the starting checkpoint (initial state, or the latest completed round).

    Returns (rounds done, rounds remaining, manifest metadata); writes a Markdown link to the
    experiment's MLflow run to ``link_path`` (shown in the KFP UI)."""
    cfg = load_cfg(config_json)
    store, exp_id = store_of(cfg), cfg.experiment_id()
    session = session_of(cfg, store, tags)
    session.check_identity()  # other result settings than the stored experiment's: refused before any work
    spec = ensure_data(cfg, store)
    start, _ = session.begin(spec)
    run_id = session.open_run() if start < cfg.train.rounds else _stored_run_id(store, exp_id)
    if link_path:
        Path(link_path).parent.mkdir(parents=True, exist_ok=True)
        Path(link_path).write_text(mlflow_link(session, run_id))
    meta = write_manifest(checkpoint_path, {"experiment_id": exp_id, "round": start, "state": round_prefix(exp_id, start),
                                            "store": repr(store), "rounds_total": cfg.train.rounds,
                                            "mlflow_run_id": run_id or ""})
    return start, cfg.train.rounds - start, meta


def _stored_run_id(store: ArtifactStore, exp_id: str) -> str | None:
    key = tracking_key(exp_id)
    return store.get_json(key).get("run_id") if store.exists(key) else None


def train_rounds_task(config_json: str, start_round: int, offset: int, rounds_per_task: int, checkpoint_path: str,
                      tags: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Rounds ``start + offset*K + 1 .. start + (offset+1)*K`` (K = ``rounds_per_task``) in this process.

    The rounds run through the local engine's loop (``engine/loop.py``) with the shards from the
    store: each round is checkpointed and logged to MLflow as it completes, so a retried or
    interrupted task continues from its last completed round."""
    from mmfl.data import FederatedData
    from mmfl.engine.loop import run_experiment

    cfg = load_cfg(config_json)
    setup_task(cfg)
    store, exp_id = store_of(cfg), cfg.experiment_id()
    first = start_round + offset * rounds_per_task + 1
    last = min(cfg.train.rounds, first + rounds_per_task - 1)
    if first > cfg.train.rounds:  # not scheduled by the pipeline (its conditions); kept safe for direct calls
        return _skip(checkpoint_path, exp_id, first, "beyond"), {}
    spec = load_spec(store, exp_id)
    data = FederatedData(spec, stored_shards(store, exp_id, cfg.partition.num_clients), load_test(store, exp_id))
    result = run_experiment(cfg, store, stop_after=last, engine="kfp", data=data, tags=tags)
    evaluation = load_metrics(store, exp_id, last).get("eval")
    meta = write_manifest(checkpoint_path, {"experiment_id": exp_id, "round": last, "state": round_prefix(exp_id, last),
                                            "rounds": f"{first}-{last}", "mlflow_run_id": result.run_id or ""})
    return meta, _flat_metrics(evaluation)


def _flat_metrics(evaluation: dict[str, Any] | None) -> dict[str, float]:
    return {f"{kind}_{pattern.replace(':', '_')}": v[kind] for pattern, v in (evaluation or {}).items() for kind in ("acc", "f1")}


def client_train_task(config_json: str, start_round: int, offset: int, updates_path: str, client_slot: int = -1,
                      state_manifest: str | None = None) -> dict[str, Any]:
    """Local training of the round's sampled clients (all, or the one at ``client_slot``).

    Inside a per-client ParallelFor the round is taken from the incoming state's manifest
    (``start_round < 0``), so the loop body needs no task-output parameter.
    """
    r = round_of(start_round, offset) if start_round >= 0 else _manifest_round(state_manifest) + 1
    cfg, store, exp_id, status = _open_round(config_json, r)
    if status:
        return _skip(updates_path, exp_id, r, status)
    clients = steps.sample_clients(cfg, r)
    if client_slot >= 0:
        if client_slot >= len(clients):
            raise ConfigError(f"client_slot = {client_slot}: round {r} samples only {len(clients)} clients")
        clients = [clients[client_slot]]
    keys = [client_key(exp_id, r, "updates", c) for c in clients]
    if not all(store.exists(f"{k}/update.json") for k in keys):
        state, _ = load_round(store, exp_id, r - 1)
        updates = steps.client_train(cfg, state, load_shards(store, exp_id, clients), clients)
        for key, update in zip(keys, updates):
            store.put_update(key, update)
    return write_manifest(updates_path, {"experiment_id": exp_id, "round": r, "clients": clients, "updates": keys,
                                         "num_clients": len(clients)})


def _read_updates(store: ArtifactStore, manifests: list[dict[str, Any]]) -> list[ClientUpdate]:
    keys = [k for m in manifests for k in m.get("updates", [])]
    return [store.get_update(k) for k in keys]


def upload_prototypes_task(config_json: str, start_round: int, offset: int, updates_manifest: str, uploads_path: str) -> dict[str, Any]:
    """Each client's prototypes attached to its update (a no-op copy for methods without them)."""
    r = round_of(start_round, offset) if start_round >= 0 else _manifest_round(updates_manifest)
    cfg, store, exp_id, status = _open_round(config_json, r)
    if status:
        return _skip(uploads_path, exp_id, r, status)
    manifest = read_manifest(updates_manifest)
    clients = list(manifest["clients"])
    keys = [client_key(exp_id, r, "uploads", c) for c in clients]
    if not all(store.exists(f"{k}/update.json") for k in keys):
        state, _ = load_round(store, exp_id, r - 1)
        updates = _read_updates(store, [manifest])
        out = steps.upload_prototypes(cfg, state, load_shards(store, exp_id, clients), updates)
        for key, update in zip(keys, out):
            store.put_update(key, update)
    return write_manifest(uploads_path, {"experiment_id": exp_id, "round": r, "clients": clients, "updates": keys,
                                         "num_clients": len(clients)})


def _server_step(config_json: str, start_round: int, offset: int, state_path: str, step: str,
                 compute: Callable[[ExperimentConfig, ArtifactStore, str, int], RoundState]) -> dict[str, Any]:
    """The shell of a server task: skip past the end, else compute the step's state once and point to it."""
    r = round_of(start_round, offset)
    cfg, store, exp_id, status = _open_round(config_json, r)
    if status:
        return _skip(state_path, exp_id, r, status)
    key = step_key(exp_id, r, step)
    if not store.exists(f"{key}/state.json"):
        store.put_state(key, compute(cfg, store, exp_id, r))
    return write_manifest(state_path, {"experiment_id": exp_id, "round": r, "state": key})


def aggregate_task(config_json: str, start_round: int, offset: int, updates_manifests: list[str], state_path: str) -> dict[str, Any]:
    """Server aggregation of the round's updates (one manifest, or one per client after fan-out)."""

    def compute(cfg: ExperimentConfig, store: ArtifactStore, exp_id: str, r: int) -> RoundState:
        updates = _read_updates(store, [read_manifest(p) for p in updates_manifests])
        order = {c: i for i, c in enumerate(steps.sample_clients(cfg, r))}
        updates.sort(key=lambda u: order.get(u.client_id, len(order) + u.client_id))  # fan-in order is arbitrary
        state, _ = load_round(store, exp_id, r - 1)
        return steps.aggregate(cfg, state, updates, expected_clients=list(order),
                               shard_sizes=shard_sizes(store, exp_id, list(order)))

    return _server_step(config_json, start_round, offset, state_path, "aggregate", compute)


def schedule_task(config_json: str, start_round: int, offset: int, state_manifest: str, state_path: str) -> dict[str, Any]:
    """Server-side scheduling for the next round (FlexMod's DDPG); identity for other methods."""

    def compute(cfg: ExperimentConfig, store: ArtifactStore, exp_id: str, r: int) -> RoundState:
        return steps.schedule(cfg, store.get_state(read_manifest(state_manifest)["state"]))

    return _server_step(config_json, start_round, offset, state_path, "schedule", compute)


def evaluate_task(config_json: str, start_round: int, offset: int, state_manifest: str, checkpoint_path: str,
                  tags: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, float]]:
    """Evaluate (when due), log to MLflow, then commit the round checkpoint (metrics.json last)."""
    r = round_of(start_round, offset)
    cfg, store, exp_id, status = _open_round(config_json, r)
    evaluation: dict[str, Any] | None = None
    if status is None:
        state = store.get_state(read_manifest(state_manifest)["state"])
        if state.round != r:
            raise ArtifactError(f"state for round {r} has round = {state.round}")
        evaluation = steps.evaluate(cfg, state, load_test(store, exp_id)) if steps.should_evaluate(cfg, r) else None
        session = session_of(cfg, store, tags)
        session.open_run()
        session.after_round(state, evaluation)
        if r == cfg.train.rounds:
            session.end(load_spec(store, exp_id))
    elif status == "done":
        evaluation = load_metrics(store, exp_id, r).get("eval")
        session = session_of(cfg, store, tags)
        if r == cfg.train.rounds and not session.finished():
            session.open_run()
            session.end(load_spec(store, exp_id))
    else:
        return _skip(checkpoint_path, exp_id, r, status), {}
    meta = write_manifest(checkpoint_path, {"experiment_id": exp_id, "round": r, "state": round_prefix(exp_id, r),
                                            "evaluated": evaluation is not None})
    return meta, _flat_metrics(evaluation)
