"""Clustering alignment of prompt pools across clients, solved with the Hungarian algorithm.

FED-PRIME's inter-client prompts may encode different missing patterns at the same pool position
on different clients, so averaging them position by position mixes unrelated prompts. Instead the
server keeps ``Q`` cluster centres and alternates two steps (paper: alternating optimisation):

1. fix centres, solve for the assignment alpha: each client's prompts go to distinct clusters
   (one-to-one per client, the paper's constraint), minimising distance minus a popularity bonus;
   this is a linear assignment problem per client, solved by ``scipy.optimize.linear_sum_assignment``;
2. fix the assignment, move each centre to the weighted mean of the prompts assigned to it and
   update its popularity from the mass it received.

Popularity U(theta_q; zeta) = softmax(zeta)_q is a distribution over clusters with logits zeta kept
across rounds; the cost of putting a prompt into cluster q is reduced by ``popularity_weight *
log U_q``, so, between two comparable clusters, prompts go to the more general (popular) one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@dataclass
class AlignmentResult:
    centers: torch.Tensor  # (Q, ...) aggregated prompts
    assignments: list[np.ndarray]  # per client: cluster index of each of its prompts, shape (tau,)
    popularity: torch.Tensor  # (Q,) logits zeta after the update
    mass: torch.Tensor  # (Q,) total weight assigned to each cluster in the final assignment


def assignment_cost(prompts: torch.Tensor, centers: torch.Tensor, log_popularity: torch.Tensor,
                    popularity_weight: float) -> np.ndarray:
    """(tau, Q) cost: squared distance of flattened prompts to centres minus the popularity bonus."""
    p = prompts.reshape(prompts.shape[0], -1).double()
    c = centers.reshape(centers.shape[0], -1).double()
    dist = torch.cdist(p, c) ** 2
    # Normalise by the mean distance so the popularity weight means the same at any prompt scale.
    dist = dist / dist.mean().clamp_min(1e-12)
    cost = dist - popularity_weight * log_popularity.double().unsqueeze(0)
    return cost.numpy()


def assign(prompts: torch.Tensor, centers: torch.Tensor, log_popularity: torch.Tensor,
           popularity_weight: float = 0.0) -> np.ndarray:
    """Cluster index of each of one client's prompts; distinct clusters per client (needs tau <= Q)."""
    tau, q = prompts.shape[0], centers.shape[0]
    if tau > q:
        raise ValueError(f"a client has {tau} prompts but there are only {q} clusters; need num_clusters >= pool size")
    rows, cols = linear_sum_assignment(assignment_cost(prompts, centers, log_popularity, popularity_weight))
    out = np.empty(tau, dtype=np.int64)
    out[rows] = cols
    return out


def align_and_aggregate(
    client_prompts: Sequence[torch.Tensor],
    centers: torch.Tensor,
    popularity: torch.Tensor,
    client_weights: Sequence[torch.Tensor] | Sequence[float],
    popularity_weight: float = 0.0,
    iterations: int = 3,
    popularity_momentum: float = 0.5,
) -> AlignmentResult:
    """Alternating Hungarian assignment / centre update, starting from the previous centres.

    ``client_prompts[t]``: (tau, ...) prompts of client t; ``client_weights[t]``: a scalar (e.g. the
    sample count) or a (tau,) vector (e.g. samples x how often each prompt was retrieved).
    Clusters that receive no prompt keep their previous centre.
    """
    if not client_prompts:
        raise ValueError("align_and_aggregate needs at least one client")
    q = centers.shape[0]
    weights = []
    for p, w in zip(client_prompts, client_weights):
        w = torch.as_tensor(w, dtype=torch.float64)
        weights.append(w.expand(p.shape[0]).clone() if w.dim() == 0 else w.reshape(p.shape[0]))
    current = centers.detach().double().clone()
    log_pop = torch.log_softmax(popularity.double(), dim=0)
    assignments: list[np.ndarray] = []
    mass = torch.zeros(q, dtype=torch.float64)
    for _ in range(max(1, iterations)):
        assignments = [assign(p.double(), current, log_pop, popularity_weight) for p in client_prompts]
        total = torch.zeros_like(current)
        mass = torch.zeros(q, dtype=torch.float64)
        for p, a, w in zip(client_prompts, assignments, weights):
            idx = torch.from_numpy(a)
            total.index_add_(0, idx, p.double() * w.reshape(-1, *([1] * (p.dim() - 1))))
            mass.index_add_(0, idx, w)
        hit = mass > 0
        current[hit] = total[hit] / mass[hit].reshape(-1, *([1] * (current.dim() - 1)))
    share = mass / mass.sum().clamp_min(1e-12)
    new_pop = popularity_momentum * popularity.double() + (1 - popularity_momentum) * torch.log(share + 1e-3)
    return AlignmentResult(current.to(centers.dtype), assignments, new_pop.to(popularity.dtype), mass)
