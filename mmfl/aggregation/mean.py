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
    w = torch.tensor([float(x) / total for x in weights], dtype=torch.float64)
    out = {}
    for key in keys:
        stacked = torch.stack([t[key].to(torch.float64) for t in tensors])
        out[key] = torch.tensordot(w, stacked, dims=1).to(tensors[0][key].dtype)
    return out
