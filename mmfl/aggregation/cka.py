"""Linear Centered Kernel Alignment (Kornblith et al., 2019) and CKA-based aggregation weights.

FedMVP weighs client models by how similar their representations are to everyone else's on the
same server-side probe data: a model whose representation agrees with many others sits in the
middle of the similarity graph and gets more weight; an outlier (e.g. a client that only saw one
modality) gets less. CKA is used because it compares representations up to rotation and scale,
so two clients that learned the same features in a different basis still count as similar.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def linear_cka(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> float:
    """Linear CKA of two representations (n, d1) and (n, d2) of the same n inputs, in [0, 1].

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring the columns. It is 1 for
    X against itself, invariant to orthogonal transforms and isotropic scaling of either side.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs (n, d) inputs with the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.double() - x.double().mean(dim=0, keepdim=True)
    y = y.double() - y.double().mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm.clamp_min(eps))


def cka_matrix(reps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Symmetric (K, K) matrix of pairwise linear CKA between K representations of the same inputs."""
    k = len(reps)
    out = torch.eye(k, dtype=torch.float64)
    for i in range(k):
        for j in range(i + 1, k):
            out[i, j] = out[j, i] = linear_cka(reps[i], reps[j])
    return out


def cka_weights(reps: Sequence[torch.Tensor], num_samples: Sequence[int] | None = None, temperature: float = 0.0) -> torch.Tensor:
    """Aggregation weights from the CKA similarity graph, summing to 1.

    Importance of client i = mean CKA to the other clients (its weighted degree in the graph).
    ``temperature`` > 0 sharpens with a softmax over degree / temperature; 0 uses the degrees
    themselves. Weights are multiplied by the sample counts when given (FedAvg's prior).
    """
    k = len(reps)
    if k == 0:
        raise ValueError("cka_weights needs at least one representation")
    if k == 1:
        return torch.ones(1, dtype=torch.float64)
    sim = cka_matrix(reps)
    degree = (sim.sum(dim=1) - 1.0) / (k - 1)
    score = torch.softmax(degree / temperature, dim=0) if temperature > 0 else degree.clamp_min(1e-6)
    if num_samples is not None:
        score = score * torch.as_tensor(list(num_samples), dtype=torch.float64)
    return score / score.sum()
