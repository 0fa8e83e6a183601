"""Robust averaging of client models: the configured rule applied to the updates' deltas.

``robust_average`` is what every weight-averaging method calls on the server. With the default
rule ``mean`` it is exactly ``weighted_mean`` (bit for bit); the other rules work on each
client's *delta* (its weights minus the global model's) and add the result back to the global
model:

- ``median``: coordinate-wise median of the deltas (sample weights are not used);
- ``trimmed_mean``: coordinate-wise mean without the ``floor(byzantine_fraction * n)`` largest
  and smallest values (sample weights are not used);
- ``multi_krum``: the weighted mean of the ``krum_select`` updates (default ``n - f``) with the
  lowest Krum scores, ``f = floor(byzantine_fraction * n)`` (``krum_select: 1`` is Krum);
- ``clip``: every delta scaled to at most ``clip_ratio`` times the median delta norm, then the
  weighted mean.

Tensors that are not floating point, or that the global model does not hold (buffers such as
counters), are averaged with ``weighted_mean`` under every rule. ``delta_stats`` gives the
per-update statistics the screening uses (norms, cosine to the coordinate-median centre,
optionally the Gram matrix), computed one parameter tensor at a time in column blocks, so no
``clients x parameters`` matrix of the whole model is ever built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmfl.aggregation import robust_rules as rules
from mmfl.aggregation.mean import weighted_mean
from mmfl.state import shape_dtype

log = logging.getLogger(__name__)

RULES = ("mean", "median", "trimmed_mean", "multi_krum", "clip")
# float64 elements one block of deltas may hold (n rows x columns): 128 MiB
_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class DeltaStats:
    """Whole-update statistics of n deltas: L2 norms, cosine to the coordinate-median centre, Gram matrix."""

    norms: torch.Tensor
    centre_cosines: torch.Tensor
    centre_norm: float
    gram: torch.Tensor | None = None


def delta_keys(tensors: Sequence[Mapping[str, torch.Tensor]], reference: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys whose deltas the rules work on: floating point, held by the reference with the same shape."""
    out = []
    for key in tensors[0].keys():
        ref = reference.get(key)
        if ref is None or not ref.is_floating_point():
            continue
        shape, dtype = shape_dtype(tensors[0], key)
        if tuple(shape) == tuple(ref.shape) and dtype.is_floating_point:
            out.append(key)
    return out


def _delta_blocks(tensors: Sequence[Mapping[str, torch.Tensor]], reference: Mapping[str, torch.Tensor],
                  key: str) -> Iterator[tuple[slice, torch.Tensor]]:
    """(column slice, (n, cols) float64 deltas) of one parameter tensor, in blocks of bounded size."""
    ref = reference[key].detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    rows = [t[key].detach().to(device="cpu").reshape(-1) for t in tensors]
    cols = max(1, _BLOCK_ELEMENTS // len(rows))
    for start in range(0, ref.numel(), cols):
        sl = slice(start, min(start + cols, ref.numel()))
        yield sl, torch.stack([r[sl].to(torch.float64) for r in rows]) - ref[sl]


def delta_stats(tensors: Sequence[Mapping[str, torch.Tensor]], reference: Mapping[str, torch.Tensor],
                with_gram: bool = False) -> DeltaStats:
    """Norms of the deltas, their cosine to the coordinate-wise median delta, and optionally their Gram matrix."""
    n = len(tensors)
    sq = torch.zeros(n, dtype=torch.float64)
    dots = torch.zeros(n, dtype=torch.float64)
    centre_sq = 0.0
    g = torch.zeros(n, n, dtype=torch.float64) if with_gram else None
    for key in delta_keys(tensors, reference):
        for _, block in _delta_blocks(tensors, reference, key):
            centre = rules.coordinate_median(block)
            sq += (block * block).sum(dim=1)
            dots += block @ centre
            centre_sq += float(centre @ centre)
            if g is not None:
                g += rules.gram(block)
    norms = sq.sqrt()
    centre_norm = math.sqrt(centre_sq)
    return DeltaStats(norms, rules.cosines(dots, norms, centre_norm), centre_norm, g)


def byzantine_count(n: int, fraction: float) -> int:
    """f = floor(fraction * n), kept below n / 2 so that the honest updates are the majority."""
    return max(0, min(int(math.floor(fraction * n + 1e-9)), (n - 1) // 2))


def robust_average(
    tensors: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], reference: Mapping[str, torch.Tensor],
    rule: Any,
) -> dict[str, torch.Tensor]:
    """The aggregate of ``tensors`` under ``rule`` (an object with ``rule``, ``byzantine_fraction``,
    ``krum_select`` and ``clip_ratio``, e.g. ``reliability.aggregation``); ``reference``: the global model."""
    name = rule.rule
    if name not in RULES:
        raise ValueError(f"unknown aggregation rule {name!r}; known: {', '.join(RULES)}")
    if name == "mean" or len(tensors) == 1:
        return weighted_mean(tensors, weights)
    n = len(tensors)
    if name == "multi_krum":
        f = byzantine_count(n, rule.byzantine_fraction)
        m = min(n, rule.krum_select) if rule.krum_select is not None else n - f
        stats = delta_stats(tensors, reference, with_gram=True)
        chosen = rules.multi_krum(rules.squared_distances(stats.gram), f, m)
        log.info("multi_krum: f = %d, kept %d of %d updates (rows %s)", f, m, n, chosen)
        return weighted_mean([tensors[i] for i in chosen], [weights[i] for i in chosen])
    keys = delta_keys(tensors, reference)
    rest = [k for k in tensors[0].keys() if k not in set(keys)]
    out = weighted_mean([{k: t[k] for k in rest} for t in tensors], weights) if rest else {}
    factors = None
    if name == "clip":
        norms = delta_stats(tensors, reference).norms
        threshold = rule.clip_ratio * float(norms.median())
        factors = rules.clip_factors(norms, threshold) if threshold > 0 else torch.ones(n, dtype=torch.float64)
        w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
        coeff = factors * w / w.sum()
    trim = byzantine_count(n, rule.byzantine_fraction)
    for key in keys:
        ref = reference[key].detach().to(device="cpu")
        flat = torch.empty(ref.numel(), dtype=torch.float64)
        for sl, block in _delta_blocks(tensors, reference, key):
            if name == "median":
                flat[sl] = rules.coordinate_median(block)
            elif name == "trimmed_mean":
                flat[sl] = rules.trimmed_mean(block, trim)
            else:
                flat[sl] = coeff @ block
        value = ref.to(torch.float64).reshape(-1) + flat
        out[key] = value.reshape(ref.shape).to(shape_dtype(tensors[0], key)[1])
    return {k: out[k] for k in tensors[0].keys()}
