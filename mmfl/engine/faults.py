"""Deliberate faults in a client's work, configured under ``reliability.fault_injection``.

Fault tolerance that is never exercised is fault tolerance that does not work: these hooks let
tests (and drills on a real cluster) make one client raise, stall, kill its process, or send a
poisoned update in one round, through the same code path that real failures take.
Faults never change the experiment id, so a faulty run and a clean re-run share checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from mmfl.config import ExperimentConfig, FaultSpec
from mmfl.state import ClientUpdate

log = logging.getLogger(__name__)

PRE_TRAINING = ("raise", "exit", "sleep")
EXIT_CODE = 137  # what a SIGKILLed (e.g. OOM-killed) process reports


class InjectedFault(RuntimeError):
    """Raised by a client that was told to fail."""


def faults_for(cfg: ExperimentConfig, round_index: int, client_id: int) -> list[FaultSpec]:
    """Faults configured for this (round, client) that are still armed."""
    return [
        f for f in cfg.reliability.fault_injection
        if f.round == round_index and f.client == client_id and _armed(f)
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


def after_training(cfg: ExperimentConfig, round_index: int, update: ClientUpdate) -> ClientUpdate:
    """Apply the faults that poison a finished update: nan, inf or scale."""
    for fault in faults_for(cfg, round_index, update.client_id):
        if fault.mode in PRE_TRAINING:
            continue
        _fire(fault, round_index, update.client_id)
        tensors = dict(update.tensors)
        weights = [k for k, v in tensors.items() if k.startswith("model/") and v.is_floating_point()]
        if fault.mode == "scale":
            for key in weights:
                tensors[key] = tensors[key] * fault.scale
        elif weights:  # one diverged entry is enough to ruin an average
            poisoned = tensors[weights[0]].clone()
            poisoned.view(-1)[0] = float(fault.mode)
            tensors[weights[0]] = poisoned
        update = ClientUpdate(update.client_id, update.num_samples, tensors, update.metrics, update.meta)
    return update
