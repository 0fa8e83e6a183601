"""Weighted averaging of parameter dictionaries (FedAvg's server step)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_mean(tensors: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_k w_k * t_k / sum_k w_k for every key; all dicts must share keys and shapes."""
    if not tensors:
        raise ValueError("weighted_mean needs at least one parameter set")
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} parameter sets but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {total}")
    keys = tensors[0].keys()
    for t in tensors[1:]:
        if t.keys() != keys:
            raise ValueError("parameter sets have different keys")
    fractions = [float(x) / total for x in weights]
    out = {}
    for key in keys:
        # Accumulate in float64, one client at a time: no (clients x params) stack in memory.
        acc = torch.zeros(tensors[0][key].shape, dtype=torch.float64, device=tensors[0][key].device)
        for frac, t in zip(fractions, tensors):
            acc.add_(t[key].to(torch.float64), alpha=frac)
        out[key] = acc.to(tensors[0][key].dtype)
    return out
