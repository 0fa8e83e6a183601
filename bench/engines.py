"""Shared pieces of the one-process engine benches (loop against vectorized on the same round).

``alternate`` times each engine in turn, ``repeats`` times, so both see the same load on a shared
machine; ``max_update_diff`` is the check that the two engines trained the same weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any


def alternate(engines: dict[str, Callable[[], Any]], repeats: int
              ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Any]]:
    """(wall seconds per call, CPU seconds of this process per call, last result) of each engine, the
    engines called in turn ``repeats`` times. CPU time adds up every thread: the steadier measure of
    the work on a shared machine."""
    wall: dict[str, list[float]] = {k: [] for k in engines}
    cpu: dict[str, list[float]] = {k: [] for k in engines}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in engines.items():
            t0, c0 = time.perf_counter(), time.process_time()
            last[name] = run()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu, last


def max_update_diff(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Largest absolute difference between the model weights of two engines' updates (same clients, same order)."""
    return max(float((u.model_weights()[k].double() - v.model_weights()[k].double()).abs().max())
               for u, v in zip(a, b) for k in u.model_weights())
