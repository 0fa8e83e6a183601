"""Runs of two settings (2 vs 5 local epochs) and three seeds, with accuracies chosen so that the
report's statistics can be computed by hand (see tests/test_comparison.py for the arithmetic)."""

from __future__ import annotations

# (method, local_epochs) -> final accuracy on "full" per seed 0, 1, 2; "only:a" is full - 0.10
FINAL = {
    ("fedavg", 2): [0.80, 0.84, 0.88],   # mean 0.84, std 0.04
    ("fedavg", 5): [0.85, 0.87, 0.89],   # mean 0.87, std 0.02
    ("fedprox", 2): [0.82, 0.83, 0.90],  # mean 0.85, std sqrt(0.0019); minus fedavg: +0.02 -0.01 +0.02
}
# round -> costs recorded in each round's history entry (deterministic part)
ROUND_COSTS = {"bytes_up": 1000.0, "bytes_down": 3000.0, "client_updates": 4.0, "encoder_updates": 10.0}
ROUNDS = 2


def accuracy(method: str, epochs: int, seed: int, pattern: str, round_index: int) -> float:
    """Final accuracy at the last round; round 1 is 0.2 lower (the curve of the plots)."""
    final = FINAL[(method, epochs)][seed] - (0.10 if pattern == "only:a" else 0.0)
    return round(final - (0.2 if round_index < ROUNDS else 0.0), 6)
