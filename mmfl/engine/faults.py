"""Deliberate faults in a client's work, configured under ``reliability.fault_injection``.

Fault tolerance that is never exercised is fault tolerance that does not work: these hooks let
tests (and drills on a real cluster) make one client raise, stall, kill its process, or send a
poisoned update in one round or every round, through the same code path that real failures
take. The Byzantine modes (``scale``, ``boost``, ``noise``, ``labels``, ``samples``) are the
attacks of ``make bench-robust``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mmfl.config import ExperimentConfig, FaultSpec
from mmfl.data.dataset import MultimodalDataset
from mmfl.state import ClientUpdate

log = logging.getLogger(__name__)

PRE_TRAINING = ("raise", "exit", "sleep")
DATA = ("labels",)
EXIT_CODE = 137  # what a SIGKILLed (e.g. OOM-killed) process reports


class InjectedFault(RuntimeError):
    """Raised by a client that was told to fail."""


def faults_for(cfg: ExperimentConfig, round_index: int, client_id: int) -> list[FaultSpec]:
    """Faults configured for this (round, client) that are still armed."""
    return [
        f for f in cfg.reliability.fault_injection
        if f.round in (None, round_index) and f.client == client_id and _armed(f)
    ]


def _armed(fault: FaultSpec) -> bool:
    return fault.once_file is None or not Path(fault.once_file).exists()


def _fire(fault: FaultSpec, round_index: int, client_id: int) -> None:
    """Mark a once-only fault as used (before acting, so a process exit cannot re-arm it)."""
    log.warning("round %d client %d: injecting fault %r", round_index, client_id, fault.mode)
    if fault.once_file is not None:
        path = Path(fault.once_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"round {round_index} client {client_id} mode {fault.mode}\n")


def before_training(cfg: ExperimentConfig, round_index: int, client_id: int) -> None:
    """Apply the faults that strike before a client trains: raise, exit or sleep."""
    for fault in faults_for(cfg, round_index, client_id):
        if fault.mode not in PRE_TRAINING:
            continue
        _fire(fault, round_index, client_id)
        if fault.mode == "raise":
            raise InjectedFault(f"injected failure of client {client_id} in round {round_index}")
        if fault.mode == "exit":
            os._exit(EXIT_CODE)
        # sleep in short slices so that a timeout can interrupt the stalled client thread
        deadline = time.monotonic() + fault.seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def poison_shards(cfg: ExperimentConfig, round_index: int, shards: Mapping[int, MultimodalDataset],
                  client_ids: list[int] | tuple[int, ...]) -> Mapping[int, MultimodalDataset]:
    """``shards`` with the labels of clients under a ``labels`` fault flipped (``C - 1 - y``) for this round."""
    flipped = {}
    for cid in client_ids:
        for fault in faults_for(cfg, round_index, cid):
            if fault.mode in DATA and cid not in flipped:
                _fire(fault, round_index, cid)
                shard = shards[cid]
                flipped[cid] = MultimodalDataset(shard.spec, shard.inputs, shard.spec.num_classes - 1 - shard.labels,
                                                 shard.present)
    return {**shards, **flipped} if flipped else shards


def _noise(cfg: ExperimentConfig, round_index: int, client_id: int, like: torch.Tensor, std: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, 0xBAD, round_index, client_id])
                                            .generate_state(1)[0]))
    return torch.randn(like.shape, generator=gen, dtype=torch.float64) * std


def after_training(cfg: ExperimentConfig, round_index: int, update: ClientUpdate,
                   reference: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
    """Apply the faults that poison a finished update; ``reference`` (the global model) for boost and noise."""
    for fault in faults_for(cfg, round_index, update.client_id):
        if fault.mode in PRE_TRAINING or fault.mode in DATA:
            continue
        if fault.mode in ("boost", "noise") and reference is None:
            raise ValueError(f"fault mode {fault.mode!r} needs the global model")
        _fire(fault, round_index, update.client_id)
        if fault.mode == "samples":  # only the claimed count is false; the tensors stay as trained (and where)
            update = ClientUpdate(update.client_id, int(fault.factor()), update.tensors, update.metrics, update.meta)
            continue
        tensors = dict(update.tensors)
        num_samples = update.num_samples
        weights = [k for k, v in tensors.items() if k.startswith("model/") and v.is_floating_point()]
        factor = fault.factor()
        if fault.mode == "scale":
            for key in weights:
                tensors[key] = tensors[key] * factor
        elif fault.mode in ("boost", "noise"):
            for key in weights:
                ref = reference[key[len("model/"):]].to(torch.float64)
                value = tensors[key].to(torch.float64)
                moved = ref + factor * (value - ref) if fault.mode == "boost" else (
                    ref + _noise(cfg, round_index, update.client_id, ref, factor))
                tensors[key] = moved.to(tensors[key].dtype)
        elif weights:  # one diverged entry is enough to ruin an average
            poisoned = tensors[weights[0]].clone()
            poisoned.view(-1)[0] = float(fault.mode)
            tensors[weights[0]] = poisoned
        update = ClientUpdate(update.client_id, num_samples, tensors, update.metrics, update.meta)
    return update
