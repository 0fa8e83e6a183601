"""FedProx (Li et al., 2020): local loss + mu/2 * ||w - w_global||^2 limits client drift."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field

from mmfl.methods.base import Context, Method


class FedProxParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mu: float = Field(0.01, ge=0, description="Proximal term weight (paper grid: 0.001-1)")


class FedProx(Method):
    Params = FedProxParams
    vectorizable = True

    def penalty(self, params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], ctx: Context) -> torch.Tensor | None:
        mu = ctx.params.mu
        if mu == 0:
            return None
        return 0.5 * mu * sum(((p - anchor[n].to(p.device)) ** 2).sum() for n, p in params.items())
