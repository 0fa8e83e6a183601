"""How many pipeline tasks a round costs, and how rounds are split into runs (segments)."""

from __future__ import annotations

import math

from mmfl.config import ExperimentConfig
from mmfl.engine import steps
from mmfl.errors import ConfigError


def steps_per_round(cfg: ExperimentConfig, fan_out: bool = False) -> int:
    """Pipeline tasks one round costs: train, [prototypes], aggregate, [schedule], evaluate."""
    method = steps.method_of(cfg)
    per_client = 1 + int(method.uses_prototypes)
    clients = len(steps.sample_clients(cfg, 1)) if fan_out else 1
    return per_client * clients + 2 + int(method.uses_schedule)


def segment_rounds(cfg: ExperimentConfig, max_tasks: int = 40, fan_out: bool = False) -> int:
    """Rounds one pipeline run unrolls so that it stays within ``max_tasks`` tasks (one is prepare)."""
    per = steps_per_round(cfg, fan_out)
    if max_tasks - 1 < per:
        raise ConfigError(f"max_tasks = {max_tasks}: one round of {cfg.method.name} needs {per} tasks plus 1")
    return max(1, min(cfg.train.rounds, (max_tasks - 1) // per))


def segments_needed(cfg: ExperimentConfig, rounds_per_segment: int, done: int = 0) -> int:
    return math.ceil(max(0, cfg.train.rounds - done) / rounds_per_segment)
