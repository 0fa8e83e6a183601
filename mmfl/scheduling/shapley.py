"""Exact Shapley values over a small set of players (modalities), by enumerating all subsets.

    phi_i = sum_{S subset of N without i} |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S))

With a handful of modalities 2^n evaluations are cheap, so no sampling approximation is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from math import factorial

import numpy as np

Coalition = frozenset[int]


def all_coalitions(n: int) -> list[Coalition]:
    """Every subset of {0..n-1}, the empty one included, by increasing size."""
    return [frozenset(c) for k in range(n + 1) for c in combinations(range(n), k)]


def coalition_key(coalition: Coalition, n: int) -> str:
    """A stable text key (bit mask over n players) for JSON/metrics: {0, 2} of 3 -> "101"."""
    return "".join("1" if i in coalition else "0" for i in range(n))


def shapley_values(n: int, value: Callable[[Coalition], float]) -> np.ndarray:
    """Exact Shapley value of each of the ``n`` players for the characteristic function ``value``."""
    if n < 1:
        raise ValueError(f"need at least one player, got n={n}")
    cache = {c: float(value(c)) for c in all_coalitions(n)}
    phi = np.zeros(n)
    for i in range(n):
        for coalition, v in cache.items():
            if i in coalition:
                continue
            s = len(coalition)
            weight = factorial(s) * factorial(n - s - 1) / factorial(n)
            phi[i] += weight * (cache[coalition | {i}] - v)
    return phi


def normalized_importance(phi: Sequence[float]) -> np.ndarray:
    """Shapley values clipped at 0 and scaled to sum 1 (uniform when no player adds anything)."""
    x = np.clip(np.asarray(phi, dtype=float), 0.0, None)
    total = x.sum()
    return x / total if total > 0 else np.full(len(x), 1.0 / len(x))
