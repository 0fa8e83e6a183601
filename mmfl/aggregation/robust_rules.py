"""Byzantine-robust aggregation rules as pure functions on stacked client rows.

Every function takes ``rows``: a ``(n, d)`` tensor, one row per client (usually a client's
update *delta*, its weights minus the global model's, flattened or one parameter tensor at a
time), and returns plain tensors. Nothing here knows about clients, configs or the store.

- ``coordinate_median``: per coordinate, the median of the n values (the mean of the two middle
  values when n is even) [Yin et al., 2018].
- ``trimmed_mean``: per coordinate, the mean after dropping the ``trim`` smallest and ``trim``
  largest values [Yin et al., 2018].
- ``krum_scores`` / ``multi_krum``: each row's score is the sum of its squared distances to its
  ``n - f - 2`` nearest other rows; Krum keeps the row with the lowest score, Multi-Krum the
  ``m`` lowest [Blanchard et al., 2017; El Mhamdi et al., 2018].
- ``clip_factors``: the factor ``min(1, c / ||row||)`` that brings each row to norm at most c.
- ``cosines``: cosine of each row with a centre (0 for a zero row or centre).

Coordinate-wise rules work one tensor at a time (``(n, numel)``), so a large model is never
stacked as a whole; Krum and clipping need whole-update quantities, which ``gram`` accumulates
tensor by tensor (pairwise distances follow from the Gram matrix).
"""

from __future__ import annotations

import torch


def _check_rows(rows: torch.Tensor) -> None:
    if rows.dim() != 2 or rows.shape[0] < 1:
        raise ValueError(f"rows must be a (n >= 1, d) tensor, got shape {tuple(rows.shape)}")


def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median of ``rows`` (n, d); the mean of the two middle values for even n."""
    _check_rows(rows)
    n = rows.shape[0]
    ordered = rows.sort(dim=0).values
    if n % 2:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(rows: torch.Tensor, trim: int) -> torch.Tensor:
    """Per-coordinate mean of ``rows`` (n, d) without the ``trim`` smallest and ``trim`` largest values."""
    _check_rows(rows)
    n = rows.shape[0]
    if trim < 0 or 2 * trim >= n:
        raise ValueError(f"trim = {trim} must satisfy 0 <= 2 * trim < n = {n}")
    if trim == 0:
        return rows.mean(dim=0)
    return rows.sort(dim=0).values[trim: n - trim].mean(dim=0)


def gram(rows: torch.Tensor) -> torch.Tensor:
    """``rows @ rows.T`` in float64: the (n, n) inner products, summed over tensors by the caller."""
    _check_rows(rows)
    r = rows.to(torch.float64)
    return r @ r.T


def squared_distances(gram_matrix: torch.Tensor) -> torch.Tensor:
    """Pairwise squared L2 distances from a Gram matrix: G_ii + G_jj - 2 G_ij (clamped at 0)."""
    diag = torch.diagonal(gram_matrix)
    return (diag[:, None] + diag[None, :] - 2 * gram_matrix).clamp(min=0)


def krum_scores(sq_dist: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each row: the sum of its ``n - f - 2`` smallest squared distances to the others.

    Krum's guarantee needs ``n > 2f + 2``; with fewer rows the neighbourhood shrinks to at least
    one other row, and the caller decides whether that is acceptable.
    """
    n = sq_dist.shape[0]
    if sq_dist.shape != (n, n):
        raise ValueError(f"expected a square distance matrix, got shape {tuple(sq_dist.shape)}")
    if n == 1:
        return torch.zeros(1, dtype=sq_dist.dtype)
    k = max(1, n - f - 2)
    others = sq_dist.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    return others.sort(dim=1).values[:, :k].sum(dim=1)


def multi_krum(sq_dist: torch.Tensor, f: int, m: int) -> list[int]:
    """Indices of the ``m`` rows with the lowest Krum scores (ties: the lower index first), in index order."""
    n = sq_dist.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"m = {m} must lie in [1, n = {n}]")
    scores = krum_scores(sq_dist, f)
    order = sorted(range(n), key=lambda i: (float(scores[i]), i))
    return sorted(order[:m])


def clip_factors(norms: torch.Tensor, threshold: float) -> torch.Tensor:
    """``min(1, threshold / norm)`` per row (1 for a zero row): scales every row to norm <= threshold."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    norms = norms.to(torch.float64)
    return torch.where(norms > threshold, threshold / norms.clamp(min=1e-300), torch.ones_like(norms))


def cosines(dots: torch.Tensor, norms: torch.Tensor, centre_norm: float) -> torch.Tensor:
    """``dots_i / (norms_i * centre_norm)``: cosine of each row with the centre; 0 where either is zero."""
    denom = norms.to(torch.float64) * float(centre_norm)
    return torch.where(denom > 0, dots.to(torch.float64) / denom.clamp(min=1e-300), torch.zeros_like(denom))
