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


def batch_prototype_contrast(rep: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Proximal prototype contrast of the PmcmFL code: each representation against its class prototype,
    with the prototypes of the other samples in the batch as negatives.

    ``rep`` (B, D) are representations, ``targets`` (B, D) the prototype of each sample's class
    (row i belongs to sample i). Logits are the unnormalised dot products ``rep @ targets.T / t``
    and sample i's positive is column i: ``-mean_i log softmax_j(<z_i, p_{y_j}> / t)[i]``. Two
    samples of the same class in a batch share a prototype, so each is also a negative of the
    other (as in the official code). Returns 0 (with a gradient path) for an empty batch.
    """
    if rep.shape[0] == 0:
        return rep.sum() * 0.0
    logits = rep @ targets.T / temperature
    return F.cross_entropy(logits, torch.arange(rep.shape[0], device=rep.device))


def paper_contrast_terms(
    tokens: torch.Tensor, fused: torch.Tensor, present: torch.Tensor, labels: torch.Tensor,
    protos: torch.Tensor, avail: torch.Tensor, fused_protos: torch.Tensor, fused_avail: torch.Tensor,
    weights: torch.Tensor, fused_weight: float, temperature: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the batch-wise prototype contrasts: one term per modality and one of the fused representation.

    ``tokens`` (B, M, D) modality embeddings, ``fused`` (B, D), ``present`` (B, M), ``protos``
    (M, C, D) and ``avail`` (M, C) the library, ``weights`` (M,) the modality terms' weights.
    The term of modality m uses the samples that have m (the official code computes it only in
    the modes where the modality is encoded); the fused term uses every sample. Samples whose
    class has no prototype yet are left out of a term. Terms of weight 0 are not computed.
    Returns ``(sum_k w_k L_k, {term name: L_k})``.
    """
    total = fused.sum() * 0.0
    parts: dict[str, torch.Tensor] = {}
    if fused_weight > 0:
        rows = fused_avail[labels]
        parts["fused"] = batch_prototype_contrast(fused[rows], fused_protos[labels[rows]], temperature)
        total = total + fused_weight * parts["fused"]
    for j in range(tokens.shape[1]):
        w = float(weights[j])
        if w <= 0:
            continue
        rows = present[:, j] & avail[j][labels]
        parts[str(j)] = batch_prototype_contrast(tokens[rows, j], protos[j][labels[rows]], temperature)
        total = total + w * parts[str(j)]
    return total, parts
