"""The five round steps, as pure functions over explicit state.

    client_train -> upload_prototypes -> aggregate -> schedule -> evaluate

The local engine calls them in one process; each Kubeflow task calls exactly one of them after
reading its inputs from the artifact store. The steps read and write nothing themselves; the
only I/O below them is what ``engine/resources.py`` hands to methods (``store://`` backbone
weights, the frozen-feature cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mmfl.config import ExperimentConfig
from mmfl.data import FederatedData, build_federated_data
from mmfl.data.missing import eval_patterns, pattern_presence
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.engine import faults, robust
from mmfl.engine.costs import round_costs
from mmfl.engine.metrics import classification_metrics
from mmfl.state import ClientUpdate, RoundState
from mmfl.errors import ConfigError
from mmfl.engine.resources import device_of, resources_for
from mmfl.methods import Method, resolve
from mmfl.methods.base import Context


def apply_execution_settings(cfg: ExperimentConfig) -> None:
    """Process-wide settings of the config (``train.threads``) and a check that ``train.device`` exists here.

    ``train.device: auto`` becomes ``cuda`` when torch sees a CUDA device and ``cpu`` otherwise (the
    config is updated in place; the experiment id does not depend on the device)."""
    if cfg.train.device == "auto":
        cfg.train.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {cfg.train.device!r}: torch sees no CUDA device on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device = {cfg.train.device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if cfg.train.threads is not None and torch.get_num_threads() != cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


def method_of(cfg: ExperimentConfig) -> Method:
    """The experiment's method (resolved, with its params validated, once per config)."""
    return resolve(cfg).method


def context(cfg: ExperimentConfig, spec: DataSpec, round_index: int, client_id: int = -1, device: str | None = None) -> Context:
    """A method's view of a step, with the engine's resources (store, feature caches) handed over."""
    return Context(cfg, spec, round_index, client_id, device_of(cfg) if device is None else device, resources_for(cfg))


def spec_of(state: RoundState) -> DataSpec:
    return DataSpec.from_json(state.meta["data_spec"])


def prepare_data(cfg: ExperimentConfig) -> FederatedData:
    """Load, split, partition and apply missing masks; deterministic in the config."""
    return build_federated_data(cfg)


def init_state(cfg: ExperimentConfig, spec: DataSpec) -> RoundState:
    return method_of(cfg).init_state(spec, cfg, resources_for(cfg))


def sample_clients(cfg: ExperimentConfig, round_index: int) -> list[int]:
    """Clients that train in round ``round_index`` (1-based), seeded by (seed, round)."""
    n = cfg.partition.num_clients
    k = max(1, int(round(cfg.train.clients_per_round * n)))
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng([cfg.seed, 4, round_index])
    return sorted(rng.choice(n, size=k, replace=False).tolist())


def client_train(
    cfg: ExperimentConfig, state: RoundState, shards: Mapping[int, MultimodalDataset], client_ids: Sequence[int]
) -> list[ClientUpdate]:
    """Local training of the sampled clients from the global state of the round.

    A client that raises or times out yields a failed update (see ``engine/robust.py``). With
    ``train.engine: auto`` (the default) or ``vectorized`` the clients train together when the
    engine reproduces the method's local training (if the batch fails, its clients are trained again
    one by one, so a failure stays with its client); otherwise,
    said once in the log, they train one by one exactly as with ``loop``, so a failure stays
    with its client. Clients under a ``labels`` fault drill train on flipped labels
    (``engine/faults.py``).
    """
    shards = faults.poison_shards(cfg, state.round + 1, shards, list(client_ids))
    reference = state.model_weights() if cfg.reliability.fault_injection else None
    method, spec = method_of(cfg), spec_of(state)

    def train_one(cid: int) -> ClientUpdate:
        return method.client_update(state, shards[cid], context(cfg, spec, state.round + 1, cid))

    if cfg.train.engine in ("auto", "vectorized") and client_ids:
        from mmfl.engine import vectorized

        trainer = vectorized.trainer_for(method, cfg, state, vectorized.sample_shard(shards, client_ids))
        if trainer is not None:
            return robust.train_batch(cfg, state.round + 1, client_ids,
                                      lambda ids: vectorized.train_clients(trainer, cfg, state, shards, ids),
                                      reference, train_one)

    return robust.train_clients(cfg, state.round + 1, client_ids, train_one, reference)


def upload_prototypes(
    cfg: ExperimentConfig, state: RoundState, shards: Mapping[int, MultimodalDataset], updates: Sequence[ClientUpdate]
) -> list[ClientUpdate]:
    """Attach each client's prototypes (or other side information) to its update; no-op for baselines."""
    method, spec = method_of(cfg), spec_of(state)
    if not method.uses_prototypes:
        return list(updates)
    out = []
    for u in updates:
        if robust.is_failed(u):
            out.append(u)
            continue
        ctx = context(cfg, spec, state.round + 1, u.client_id)

        def attach(u: ClientUpdate = u, ctx: Context = ctx) -> ClientUpdate:
            extra = method.client_prototypes(state, u, shards[u.client_id], ctx) or {}
            return ClientUpdate(u.client_id, u.num_samples, {**u.tensors, **extra}, u.metrics, u.meta)

        out.append(robust.guarded(cfg, state.round + 1, u.client_id, attach, stage="upload_prototypes"))
    return out


EFFICIENCY_METRICS = ("encoder_updates", "encoder_flops", "train_time_s")


def efficiency_totals(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """Sums over the round's clients of the cost metrics every one of them reported (FlexMod, Partial Update)."""
    return {k: float(sum(u.metrics[k] for u in updates)) for k in EFFICIENCY_METRICS
            if updates and all(k in u.metrics for u in updates)}


def aggregate(
    cfg: ExperimentConfig, state: RoundState, updates: Sequence[ClientUpdate],
    expected_clients: Sequence[int] | None = None, shard_sizes: Mapping[int, int] | None = None,
) -> RoundState:
    """Server aggregation; returns the state after this round (``round`` incremented).

    Failed and rejected updates are left out (recorded in the history entry); fewer accepted
    updates than the quorum raise ``robust.RoundFailedError``. ``expected_clients`` are the
    sampled clients, so that one whose update never arrived counts as failed; ``shard_sizes``
    (client -> samples in the shard the server prepared) caps the sample counts clients claim.
    The method combines the accepted models under ``reliability.aggregation``.
    """
    received = list(updates)
    updates, clients = robust.screen_round(cfg, state, updates, expected_clients, shard_sizes)
    method = method_of(cfg)
    ctx = context(cfg, spec_of(state), state.round + 1, -1, "cpu")
    new = method.aggregate(state, list(updates), ctx)
    new.meta.setdefault("history", [])
    new.meta["history"] = new.meta["history"] + [
        {
            "round": new.round,
            "clients": [u.client_id for u in updates],
            "train_loss": float(np.average([u.metrics.get("train_loss", float("nan")) for u in updates],
                                           weights=[u.num_samples for u in updates])),
            **efficiency_totals(updates),
            **{k: clients[k] for k in ("sampled", "failed", "rejected", "capped") if k in clients},
            "costs": round_costs(state, received, clients["sampled"]),
        }
    ]
    return new


def schedule(cfg: ExperimentConfig, state: RoundState, eval_metrics: dict[str, Any] | None = None) -> RoundState:
    """Server-side scheduling for the next round (FlexMod's DDPG); identity for other methods."""
    method = method_of(cfg)
    if not method.uses_schedule:
        return state
    return method.schedule(state, context(cfg, spec_of(state), state.round, -1, "cpu"), eval_metrics)


def should_evaluate(cfg: ExperimentConfig, round_index: int) -> bool:
    return round_index % cfg.eval.every == 0 or round_index == cfg.train.rounds


def evaluate(
    cfg: ExperimentConfig, state: RoundState, test: MultimodalDataset, batch_size: int = 512
) -> dict[str, dict[str, float]]:
    """Accuracy and macro-F1 of the global model for every test pattern: {pattern: {acc, f1}}."""
    method, spec = method_of(cfg), spec_of(state)
    ctx = context(cfg, spec, state.round)
    model = method.load_model(state.model_weights(), ctx)
    results = {}
    for pattern in eval_patterns(spec.names, cfg.eval.patterns):
        present = pattern_presence(pattern, spec.names, len(test), cfg.missing, cfg.seed)
        keep = present.any(dim=1)
        data = test if bool(keep.all()) else test.subset(torch.nonzero(keep).flatten())
        data = data.with_present(present[keep])
        preds = []
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            inputs = {k: v[sl].to(ctx.device) for k, v in data.inputs.items()}
            logits = method.predict(model, state, inputs, data.present[sl].to(ctx.device), ctx)
            preds.append(logits.argmax(dim=-1).cpu())
        pred = torch.cat(preds)
        results[pattern] = classification_metrics(pred, data.labels, spec.num_classes)
    return results
