"""FedProx (Li et al., 2020): local loss + mu/2 * ||w - w_global||^2 limits client drift."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mmfl.engine.state import RoundState
from mmfl.methods.base import Context, Method


class FedProxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mu: float = Field(0.01, ge=0, description="Proximal term weight (paper grid: 0.001-1)")


class FedProx(Method):
    name = "fedprox"
    Params = FedProxParams
    vectorizable = True

    def local_loss(self, model: nn.Module, inputs, present, labels, state: RoundState, ctx: Context) -> torch.Tensor:
        loss = super().local_loss(model, inputs, present, labels, state, ctx)
        mu = ctx.params.mu
        if mu == 0:
            return loss
        anchor = state.model_weights()
        prox = sum(((p - anchor[n].to(p.device)) ** 2).sum() for n, p in model.named_parameters())
        return loss + 0.5 * mu * prox

    def functional_penalty(
        self, params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], ctx: Context
    ) -> torch.Tensor | None:
        """The proximal term on explicit parameters, for the vectorized engine (same value as in local_loss)."""
        mu = ctx.params.mu
        if mu == 0:
            return None
        return 0.5 * mu * sum(((p - anchor[n]) ** 2).sum() for n, p in params.items())


METHOD = FedProx()
