"""Shared pieces of the tests that compare the vectorized engine with the per-client loop."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mmfl.config import ExperimentConfig
from mmfl.engine import steps
from mmfl.state import RoundState


def federation(cfg: ExperimentConfig) -> tuple[dict, RoundState]:
    """(client shards by id, initial state) of a resolved config."""
    data = steps.prepare_data(cfg)
    return dict(enumerate(data.clients)), steps.init_state(cfg, data.spec)


def max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest absolute difference between two tensor mappings with the same keys."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
