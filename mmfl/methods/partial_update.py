"""Partial Update, FlexMod's baseline: scheduled encoder training with a fixed, importance-blind allocation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.methods.base import NO_RESOURCES, Context, LocalData, Method, Resources
from mmfl.methods.flexmod import ALLOC, BudgetParams, FlexMod, initial_allocation, train_time
from mmfl.scheduling import modality_combinations
from mmfl.state import ClientUpdate, RoundState


class PartialUpdate(FlexMod):
    """Partial Update baseline: FlexMod's scheduled training at the same cost budget, allocation fixed.

    The paper compares FlexMod with "Entire Update" (every encoder every step: FedAvg) and
    "Partial Update" without defining the latter in the material available; here it is the
    importance-blind allocation (equal combination weights) of the same convex program, so it
    spends the same encoder budget as FlexMod without FlexMod's scheduling (no prototypes,
    Shapley values or agent, no validation hold-out, plain FedAvg aggregation).
    """

    Params = BudgetParams
    uses_prototypes = False
    uses_schedule = False
    meta_key = "partial_update"

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        state = Method.init_state(self, spec, cfg, resources)
        p: BudgetParams = self.Params.model_validate(cfg.method.params)
        m = len(spec.names)
        costs, alloc = initial_allocation(self, spec, cfg, p, np.ones(len(modality_combinations(m))))
        state.tensors[ALLOC] = torch.tensor(alloc, dtype=torch.float64)
        state.meta[self.meta_key] = {"encoder_costs": costs, "allocation": alloc.tolist(),
                                     "combinations": [[spec.names[j] for j in c] for c in modality_combinations(m)]}
        return state

    def training_shard(self, shard: MultimodalDataset, ctx: Context) -> MultimodalDataset:
        return shard  # no validation hold-out

    def finish_update(self, state: RoundState, shard: MultimodalDataset, weights: Mapping[str, torch.Tensor],
                      data: LocalData, metrics: dict[str, float], ctx: Context) -> ClientUpdate:
        return ClientUpdate(ctx.client_id, len(data), weights, {**metrics, "train_time_s": train_time(data)})

    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        return Method.aggregate(self, state, updates, ctx)

    def schedule(self, state: RoundState, ctx: Context, eval_metrics: dict[str, Any] | None = None) -> RoundState:
        return state


__all__ = ["PartialUpdate"]
