"""Weighted averaging of parameter dictionaries (FedAvg's server step)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby

import torch

from mmfl.state import StackedRow, shape_dtype


def weighted_mean(tensors: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_k w_k * t_k / sum_k w_k for every key; all mappings must share keys and shapes.

    Accumulates in float64. Plain dicts are added one client at a time (no clients x params
    stack in memory); consecutive ``StackedRow``s of one stack (clients trained together on stacked
    parameters) are reduced together where the stack lives, without copying each client's weights
    to the host. Rows are added in the given order, so the result does not depend on how the
    clients were grouped for training.
    """
    if not tensors:
        raise ValueError("weighted_mean needs at least one parameter set")
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} parameter sets but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {total}")
    keys = list(tensors[0].keys())
    for t in tensors[1:]:
        if set(t.keys()) != set(keys):
            raise ValueError("parameter sets have different keys")
    for key in keys:
        shape = shape_dtype(tensors[0], key)[0]
        for t in tensors[1:]:
            if shape_dtype(t, key)[0] != shape:
                raise ValueError(f"parameter {key!r} has shape {tuple(shape_dtype(t, key)[0])} in one set "
                                 f"and {tuple(shape)} in another")
    fractions = [float(x) / total for x in weights]
    first = tensors[0]
    acc = {key: torch.zeros(shape_dtype(first, key)[0], dtype=torch.float64) for key in keys}
    # Rows are added in the given order, so that the result rounds the same however the clients were
    # trained (one stack, several stacks or plain dicts); consecutive rows of one stack are reduced
    # together where the stack lives.
    def stack_of(item: tuple[float, Mapping[str, torch.Tensor]]) -> object:
        return item[1].group if isinstance(item[1], StackedRow) else None

    for stack, run in groupby(zip(fractions, tensors), key=stack_of):
        fracs, rows = zip(*run)
        if stack is not None:
            type(rows[0]).accumulate(acc, list(rows), list(fracs))
            continue
        for frac, t in zip(fracs, rows):
            for key in keys:
                acc[key].add_(t[key].to(device="cpu", dtype=torch.float64), alpha=frac)
    return {key: acc[key].to(shape_dtype(first, key)[1]) for key in keys}
