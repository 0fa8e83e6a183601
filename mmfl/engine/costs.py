"""What a round costs: bytes communicated, client-reported work (encoder updates, FLOPs), wall time, memory.

The deterministic part (bytes, summed client counters) goes into the round's history entry
(``steps.aggregate``), so it is in every checkpoint and identical for both drivers and a resumed
run. Wall time and peak memory depend on the machine; the experiment session logs them to the
tracker only (``cost/round_wall_s``, ``cost/peak_rss_mb``, ``cost/peak_gpu_mb``).

Bytes are what a method reports (client metrics ``bytes_up`` / ``bytes_down``), else an
estimate from the tensors themselves: down = the global state sent to each sampled client, up =
every update tensor that arrived. Client metrics whose name contains one of ``COUNTER_MARKERS``
(e.g. ``encoder_updates``, ``encoder_flops``, ``local_steps``) are summed over the round's clients.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mmfl.engine.robust import is_failed
from mmfl.state import ClientUpdate, RoundState, shape_dtype

COUNTER_MARKERS = ("local_steps", "encoder", "flops", "bytes_")


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of a dict of tensors (or a stacked row, read from shapes only)."""
    total = 0
    for key in tensors:
        shape, dtype = shape_dtype(tensors, key)
        total += shape.numel() * dtype.itemsize
    return total


def is_counter(name: str) -> bool:
    return any(marker in name for marker in COUNTER_MARKERS)


def round_costs(state: RoundState, updates: Sequence[ClientUpdate], sampled: Sequence[int]) -> dict[str, float]:
    """Costs of one round from the state sent out and the updates that came back (deterministic)."""
    arrived = [u for u in updates if not is_failed(u)]
    counters: dict[str, float] = {}
    for u in arrived:
        for name, value in u.metrics.items():
            if is_counter(name):
                counters[name] = counters.get(name, 0.0) + float(value)
    out = {"bytes_down": float(tensor_bytes(state.tensors) * len(sampled)),
           "bytes_up": float(sum(tensor_bytes(u.tensors) for u in arrived)),
           "client_updates": float(len(arrived))}
    out.update(counters)  # a method's own byte counts replace the estimates
    return out


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU, when one was used), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / (1024 * 1024)
    return out


def cost_metrics(costs: Mapping[str, Any]) -> dict[str, float]:
    """The tracker's names of a round's costs: ``cost/<name>``."""
    return {f"cost/{k}": float(v) for k, v in costs.items()}
