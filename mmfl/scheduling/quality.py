"""Encoder quality from the global prototypes: well-trained encoders separate classes.

``quality = (1 - mean cosine similarity between different classes' prototypes) / 2`` in [0, 1]:
1 when prototypes point in opposite directions on average, 0.5 when orthogonal, 0 when all
classes collapse onto one direction (an encoder that has not learned to tell classes apart).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def encoder_quality(prototypes: torch.Tensor, counts: torch.Tensor) -> float:
    """Quality of one modality's encoder from its (C, D) class prototypes; classes with count 0 are skipped.

    With fewer than two known classes nothing can be said; the result is then 0 (untrained).
    """
    known = counts > 0
    if int(known.sum()) < 2:
        return 0.0
    p = F.normalize(prototypes[known].double(), dim=-1)
    sim = p @ p.T
    c = p.shape[0]
    off_diag = (sim.sum() - sim.diagonal().sum()) / (c * (c - 1))
    return float(((1.0 - off_diag) / 2.0).clamp(0.0, 1.0))
