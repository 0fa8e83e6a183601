"""Means over the real samples of a batch that the vectorized engine may have padded.

``weight`` (B,) is 1 for a real sample and 0 for padding, or None when every sample is real (the
per-client loop). Masks instead of row selection, so the same code runs per client under
``torch.func.vmap``. ``mmfl.methods.base`` re-exports both for methods' ``batch_loss``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def masked_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-sample ``values`` over the real samples: all of them when ``weight`` is None (the loop),
    else those of weight 1 (a padded batch of the vectorized engine); 0 for a batch without any."""
    if weight is None:
        return values.mean()
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``F.cross_entropy`` averaged over the real samples of a (possibly padded) batch."""
    if weight is None:
        return F.cross_entropy(logits, labels)
    return masked_mean(F.cross_entropy(logits, labels, reduction="none"), weight)
