"""The two PmcmFL training losses, as pure functions of tensors (easy to check by hand).

Subsets of a batch (samples that have a modality, whose class has a prototype, real samples of a
padded batch) are selected with boolean masks, never by indexing, so every loss has fixed shapes
and runs under ``torch.func.vmap`` (the vectorized engine trains many clients at once). A masked
term equals the same term on the selected rows alone, up to float rounding.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _rows_ce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the ``rows`` (B,) bool of ``logits`` (B, K), softmax over ``columns`` (K,) bool only.

    Left-out columns get the lowest finite logit (not -inf), so a left-out row stays finite and its
    zero weight cannot turn gradients into NaN. 0 (with a gradient path) when no row is selected.
    """
    if columns is not None:
        logits = logits.masked_fill(~columns.unsqueeze(0), torch.finfo(logits.dtype).min)
    ce = F.cross_entropy(logits, targets, reduction="none")
    w = rows.to(logits.dtype)
    return torch.where(rows, ce, torch.zeros_like(ce)).sum() / w.sum().clamp_min(1.0)


def task_calibrated_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_masked: torch.Tensor, mask_weight: float,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy in which a sample with ``k`` prototype-masked modalities counts ``mask_weight**k``.

    A prototype mask is the mean representation of the sample's own class, so it carries label
    information that a real input would not. Weighting those samples down calibrates the task
    loss towards what the real inputs support: the head still learns to use masks (needed at
    uni-modal inference) without the masked samples dominating the objective. The result is the
    weighted mean ``sum_i w_i CE_i / sum_i w_i``.
    """
    weights = torch.pow(torch.as_tensor(mask_weight, dtype=logits.dtype), num_masked.to(logits.dtype))
    if sample_weight is not None:  # padding of a vectorized batch: weight 0
        weights = weights * sample_weight.to(logits.dtype)
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (weights * ce).sum() / weights.sum().clamp(min=torch.finfo(logits.dtype).tiny)


def prototype_contrastive_loss(
    emb: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, available: torch.Tensor, temperature: float,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Proximal prototype contrast: InfoNCE of each embedding against the global class prototypes.

    ``-log( exp(cos(z, p_y)/t) / sum_c exp(cos(z, p_c)/t) )`` averaged over samples whose class
    has a prototype (and, given ``rows``, that are selected); classes without one (``available``
    false) are left out of the denominator.
    Pulling local representations to the global prototypes (and away from other classes')
    keeps the clients' feature spaces close to one another: a proximal term in representation
    space rather than in weight space. Returns 0 (with a gradient path) when nothing applies.
    """
    valid = available[labels] if rows is None else available[labels] & rows
    sim = F.normalize(emb, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    return _rows_ce(sim, labels, valid, available) + emb.sum() * 0.0


def batch_prototype_contrast(rep: torch.Tensor, targets: torch.Tensor, temperature: float,
                             rows: torch.Tensor | None = None) -> torch.Tensor:
    """Proximal prototype contrast of the PmcmFL code: each representation against its class prototype,
    with the prototypes of the other samples in the batch as negatives.

    ``rep`` (B, D) are representations, ``targets`` (B, D) the prototype of each sample's class
    (row i belongs to sample i). Logits are the unnormalised dot products ``rep @ targets.T / t``
    and sample i's positive is column i: ``-mean_i log softmax_j(<z_i, p_{y_j}> / t)[i]``. Two
    samples of the same class in a batch share a prototype, so each is also a negative of the
    other (as in the official code). ``rows`` (B,) bool restricts the term to those samples, as
    positives and as negatives (None: all). Returns 0 (with a gradient path) for an empty batch.
    """
    if rep.shape[0] == 0:
        return rep.sum() * 0.0
    logits = rep @ targets.T / temperature
    own = torch.arange(rep.shape[0], device=rep.device)
    if rows is None:
        return F.cross_entropy(logits, own)
    return _rows_ce(logits, own, rows, rows) + rep.sum() * 0.0


def paper_contrast_terms(
    tokens: torch.Tensor, fused: torch.Tensor, present: torch.Tensor, labels: torch.Tensor,
    protos: torch.Tensor, avail: torch.Tensor, fused_protos: torch.Tensor, fused_avail: torch.Tensor,
    weights: torch.Tensor, fused_weight: float, temperature: float, real: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the batch-wise prototype contrasts: one term per modality and one of the fused representation.

    ``tokens`` (B, M, D) modality embeddings, ``fused`` (B, D), ``present`` (B, M), ``protos``
    (M, C, D) and ``avail`` (M, C) the library, ``weights`` (M,) the modality terms' weights.
    The term of modality m uses the samples that have m (the official code computes it only in
    the modes where the modality is encoded); the fused term uses every sample. Samples whose
    class has no prototype yet are left out of a term. Terms of weight 0 are not computed.
    ``real`` (B,) bool leaves out the padding of a vectorized batch (None: every sample is real).
    Returns ``(sum_k w_k L_k, {term name: L_k})``.
    """
    total = fused.sum() * 0.0
    parts: dict[str, torch.Tensor] = {}
    real = torch.ones_like(labels, dtype=torch.bool) if real is None else real
    if fused_weight > 0:
        rows = fused_avail[labels] & real
        parts["fused"] = batch_prototype_contrast(fused, fused_protos[labels], temperature, rows)
        total = total + fused_weight * parts["fused"]
    for j in range(tokens.shape[1]):
        w = float(weights[j])
        if w <= 0:
            continue
        rows = present[:, j] & avail[j][labels] & real
        parts[str(j)] = batch_prototype_contrast(tokens[:, j], protos[j][labels], temperature, rows)
        total = total + w * parts[str(j)]
    return total, parts
