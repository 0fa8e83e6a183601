"""The two PmcmFL training losses, as pure functions of tensors (easy to check by hand)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def task_calibrated_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_masked: torch.Tensor, mask_weight: float
) -> torch.Tensor:
    """Cross-entropy in which a sample with ``k`` prototype-masked modalities counts ``mask_weight**k``.

    A prototype mask is the mean representation of the sample's own class, so it carries label
    information that a real input would not. Weighting those samples down calibrates the task
    loss towards what the real inputs support: the head still learns to use masks (needed at
    uni-modal inference) without the masked samples dominating the objective. The result is the
    weighted mean ``sum_i w_i CE_i / sum_i w_i``.
    """
    weights = torch.pow(torch.as_tensor(mask_weight, dtype=logits.dtype), num_masked.to(logits.dtype))
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (weights * ce).sum() / weights.sum().clamp(min=torch.finfo(logits.dtype).tiny)


def prototype_contrastive_loss(
    emb: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, available: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Proximal prototype contrast: InfoNCE of each embedding against the global class prototypes.

    ``-log( exp(cos(z, p_y)/t) / sum_c exp(cos(z, p_c)/t) )`` averaged over samples whose class
    has a prototype; classes without one (``available`` false) are left out of the denominator.
    Pulling local representations to the global prototypes (and away from other classes')
    keeps the clients' feature spaces close to one another: a proximal term in representation
    space rather than in weight space. Returns 0 (with a gradient path) when nothing applies.
    """
    valid = available[labels]
    if not bool(valid.any()):
        return emb.sum() * 0.0
    sim = F.normalize(emb, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    sim = sim.masked_fill(~available.unsqueeze(0), float("-inf"))
    return F.cross_entropy(sim[valid], labels[valid])
