"""Training frequencies per modality combination: a small convex program, then integer step counts.

For the K non-empty modality combinations S with weights w_S (how much training S deserves),
the share x_S of a client's local steps in which exactly the encoders of S are updated solves

    maximise  w . x - (reg / 2) ||x||^2
    s.t.      sum_S x_S = 1,   min_freq <= x_S <= 1,   sum_S cost(S) x_S <= budget * cost(all)

with ``cost(S) = sum_{m in S} c_m`` for per-encoder training costs ``c_m`` (measured FLOPs, see
``scheduling/costs.py``). The last constraint caps the encoder training cost per step at a
fraction ``budget`` of training every encoder every step (the efficiency gain), so an expensive
encoder is trained less often than a cheap one of equal weight; with equal costs it is the
cardinality constraint ``sum_S |S| x_S <= budget * M``. The quadratic term keeps the solution
spread over combinations instead of on one vertex. Steps are then trained by cardinality,
largest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import cvxpy as cp
import numpy as np

from mmfl.errors import ConfigError


def modality_combinations(num_modalities: int) -> list[tuple[int, ...]]:
    """Non-empty subsets of modality indices in training order: larger first, then lexicographic."""
    return [c for k in range(num_modalities, 0, -1) for c in combinations(range(num_modalities), k)]


def combination_costs(num_modalities: int, encoder_costs: Sequence[float] | None = None) -> np.ndarray:
    """cost(S) = sum of the encoders' costs in S (``modality_combinations`` order); None = 1 per encoder (|S|)."""
    c = np.ones(num_modalities) if encoder_costs is None else np.asarray(encoder_costs, dtype=float)
    if c.shape != (num_modalities,) or not np.all(c > 0):
        raise ValueError(f"expected {num_modalities} positive encoder costs, got {encoder_costs!r}")
    return np.array([c[list(s)].sum() for s in modality_combinations(num_modalities)])


def check_feasible(num_modalities: int, budget: float, min_freq: float, encoder_costs: Sequence[float] | None = None) -> None:
    combos = modality_combinations(num_modalities)
    if min_freq * len(combos) > 1 + 1e-12:
        raise ConfigError(
            f"method.params.min_frequency = {min_freq}: {len(combos)} combinations cannot all get that share")
    cost = combination_costs(num_modalities, encoder_costs)
    cheapest = min_freq * cost.sum() + (1 - min_freq * len(combos)) * cost.min()
    if cheapest > budget * cost[0] + 1e-9:
        raise ConfigError(
            f"method.params.budget = {budget}: below the minimum encoder cost {cheapest / cost[0]:.3f} "
            f"implied by min_frequency = {min_freq}")


def allocate_frequencies(
    weights: Sequence[float], num_modalities: int, budget: float, min_freq: float, reg: float,
    encoder_costs: Sequence[float] | None = None,
) -> np.ndarray:
    """Optimal shares x (in ``modality_combinations`` order) for combination weights ``weights``.

    ``encoder_costs``: training cost of each encoder (any unit); None treats all encoders alike.
    """
    combos = modality_combinations(num_modalities)
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(combos),):
        raise ValueError(f"expected {len(combos)} combination weights, got shape {w.shape}")
    check_feasible(num_modalities, budget, min_freq, encoder_costs)
    cost = combination_costs(num_modalities, encoder_costs)
    cost = cost / cost[0]  # relative to training every encoder (the first combination is the full one)
    x = cp.Variable(len(combos))
    problem = cp.Problem(
        cp.Maximize(w @ x - (reg / 2) * cp.sum_squares(x)),
        [cp.sum(x) == 1, x >= min_freq, x <= 1, cost @ x <= budget],
    )
    problem.solve(solver=cp.CLARABEL)
    if x.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"frequency allocation failed: solver status {problem.status}")
    sol = np.clip(np.asarray(x.value, dtype=float), min_freq, 1.0)
    return project_budget(sol / sol.sum(), cost, budget, min_freq)


def project_budget(x: np.ndarray, cost: np.ndarray, cap: float, min_freq: float) -> np.ndarray:
    """Remove solver round-off: move share from the costliest to the cheapest combination until the cap holds."""
    x = x.copy()
    excess = float(cost @ x - cap)
    if excess <= 0:
        return x
    big, small = int(np.argmax(cost)), int(np.argmin(cost))
    move = min(excess / max(cost[big] - cost[small], 1e-12), x[big] - min_freq)
    x[big] -= move
    x[small] += move
    return x


def step_counts(shares: Sequence[float], total_steps: int) -> list[int]:
    """Integer steps per combination summing to ``total_steps`` (largest remainder rounding)."""
    x = np.asarray(shares, dtype=float) * total_steps
    counts = np.floor(x).astype(int)
    rest = total_steps - int(counts.sum())
    order = np.argsort(-(x - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts.tolist()


def step_plan(shares: Sequence[float], total_steps: int) -> list[int]:
    """Combination index for each local step: counts from ``step_counts``, combinations by cardinality first."""
    plan: list[int] = []
    for k, n in enumerate(step_counts(shares, total_steps)):
        plan.extend([k] * n)
    return plan
