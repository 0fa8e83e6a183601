"""Training frequencies per modality combination: a small convex program, then integer step counts.

For the K non-empty modality combinations S with weights w_S (how much training S deserves),
the share x_S of a client's local steps in which exactly the encoders of S are updated solves

    maximise  w . x - (reg / 2) ||x||^2
    s.t.      sum_S x_S = 1,   min_freq <= x_S <= 1,   sum_S |S| x_S <= budget * M

The last constraint caps encoder updates per step at a fraction ``budget`` of updating all M
encoders every step (the efficiency gain); the quadratic term keeps the solution spread over
combinations instead of on one vertex. Steps are then trained by cardinality, largest first.
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


def check_feasible(num_modalities: int, budget: float, min_freq: float) -> None:
    combos = modality_combinations(num_modalities)
    if min_freq * len(combos) > 1 + 1e-12:
        raise ConfigError(
            f"method.params.min_frequency = {min_freq}: {len(combos)} combinations cannot all get that share")
    cheapest = min_freq * sum(len(c) for c in combos) + (1 - min_freq * len(combos)) * 1
    if cheapest > budget * num_modalities + 1e-9:
        raise ConfigError(
            f"method.params.budget = {budget}: below the minimum encoder cost {cheapest / num_modalities:.3f} "
            f"implied by min_frequency = {min_freq}")


def allocate_frequencies(
    weights: Sequence[float], num_modalities: int, budget: float, min_freq: float, reg: float
) -> np.ndarray:
    """Optimal shares x (in ``modality_combinations`` order) for combination weights ``weights``."""
    combos = modality_combinations(num_modalities)
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(combos),):
        raise ValueError(f"expected {len(combos)} combination weights, got shape {w.shape}")
    check_feasible(num_modalities, budget, min_freq)
    card = np.array([len(c) for c in combos], dtype=float)
    x = cp.Variable(len(combos))
    problem = cp.Problem(
        cp.Maximize(w @ x - (reg / 2) * cp.sum_squares(x)),
        [cp.sum(x) == 1, x >= min_freq, x <= 1, card @ x <= budget * num_modalities],
    )
    problem.solve(solver=cp.CLARABEL)
    if x.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"frequency allocation failed: solver status {problem.status}")
    sol = np.clip(np.asarray(x.value, dtype=float), min_freq, 1.0)
    return project_budget(sol / sol.sum(), card, budget * num_modalities, min_freq)


def project_budget(x: np.ndarray, card: np.ndarray, cap: float, min_freq: float) -> np.ndarray:
    """Remove solver round-off: move share from the largest to the smallest combinations until the cap holds."""
    x = x.copy()
    excess = float(card @ x - cap)
    if excess <= 0:
        return x
    big, small = int(np.argmax(card)), int(np.argmin(card))
    move = min(excess / max(card[big] - card[small], 1e-12), x[big] - min_freq)
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
