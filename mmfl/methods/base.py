"""The Method interface every algorithm implements, with FedAvg-style defaults.

A method is a stateless object; all state lives in ``RoundState`` (server) and in the
``ClientUpdate`` a client returns, so the same method code runs in one process or across pods.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.nn import functional as F

from mmfl.aggregation import weighted_mean
from mmfl.config import ExperimentConfig
from mmfl.data.types import DataSpec, MultimodalDataset
from mmfl.engine.state import ClientUpdate, RoundState
from mmfl.models import MissingStrategy, MultimodalNet


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed determined by the given integers (experiment seed, round, client, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass
class Context:
    """What a step knows besides the state: config, validated method params, round, client."""

    cfg: ExperimentConfig
    spec: DataSpec
    round: int
    client_id: int = -1
    device: str = "cpu"

    @cached_property
    def params(self) -> Any:
        return get_params(self.cfg)

    def seed(self, *extra: int) -> int:
        return derive_seed(self.cfg.seed, self.round, self.client_id, *extra)


def get_params(cfg: ExperimentConfig) -> BaseModel:
    from mmfl.methods import get_method

    return get_method(cfg.method.name).Params.model_validate(cfg.method.params)


def iterate_batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


class Method:
    """Defaults implement FedAvg with the explicit missing-modality path of ``MultimodalNet``."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type[BaseModel]] = NoParams
    missing_strategy: ClassVar[MissingStrategy] = "mask"
    uses_prototypes: ClassVar[bool] = False
    uses_schedule: ClassVar[bool] = False
    vectorizable: ClassVar[bool] = False  # a class sets True itself when engine/vectorized.py reproduces its local training

    # ---- model and state -------------------------------------------------------------------
    def build_model(self, spec: DataSpec, cfg: ExperimentConfig) -> nn.Module:
        return MultimodalNet(spec, cfg.model, self.missing_strategy)

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig) -> RoundState:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, 0xC0FFEE))
            model = self.build_model(spec, cfg)
        tensors = {f"model/{k}": v.detach().clone() for k, v in model.state_dict().items()}
        return RoundState(0, tensors, {"method": self.name, "data_spec": spec.to_json()})

    def load_model(self, weights: dict[str, torch.Tensor], ctx: Context) -> nn.Module:
        model = self.build_model(ctx.spec, ctx.cfg)
        model.load_state_dict(weights)
        return model.to(ctx.device)

    # ---- client side -------------------------------------------------------------------------
    def client_update(self, state: RoundState, shard: MultimodalDataset, ctx: Context) -> ClientUpdate:
        global_weights = state.model_weights()
        model = self.load_model(global_weights, ctx)
        metrics = self.train_local(model, shard, ctx, state)
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return ClientUpdate(ctx.client_id, len(shard), {f"model/{k}": v for k, v in weights.items()}, metrics)

    def local_loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], present: torch.Tensor, labels: torch.Tensor,
        state: RoundState, ctx: Context,
    ) -> torch.Tensor:
        return F.cross_entropy(model(inputs, present), labels)

    def make_optimizer(self, model: nn.Module, ctx: Context) -> torch.optim.Optimizer:
        t = ctx.cfg.train
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def train_local(self, model: nn.Module, shard: MultimodalDataset, ctx: Context, state: RoundState) -> dict[str, float]:
        """Plain local SGD over ``local_epochs``; all randomness seeded by (seed, round, client)."""
        t = ctx.cfg.train
        opt = self.make_optimizer(model, ctx)
        gen = torch.Generator().manual_seed(ctx.seed())
        total, steps = 0.0, 0
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed(1))
            for _ in range(t.local_epochs):
                for idx in iterate_batches(len(shard), t.batch_size, gen):
                    inputs = {k: v[idx].to(ctx.device) for k, v in shard.inputs.items()}
                    loss = self.local_loss(model, inputs, shard.present[idx].to(ctx.device), shard.labels[idx].to(ctx.device), state, ctx)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                    steps += 1
        return {"train_loss": total / max(steps, 1), "local_steps": float(steps)}

    def client_prototypes(
        self, state: RoundState, update: ClientUpdate, shard: MultimodalDataset, ctx: Context
    ) -> dict[str, torch.Tensor] | None:
        """Tensors a client uploads besides its model (prototype methods override)."""
        return None

    # ---- server side -------------------------------------------------------------------------
    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        weights = weighted_mean([u.model_weights() for u in updates], [u.num_samples for u in updates])
        return RoundState(state.round + 1, state.with_model(weights), dict(state.meta))

    def schedule(self, state: RoundState, ctx: Context, eval_metrics: dict[str, Any] | None = None) -> RoundState:
        return state

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs: dict[str, torch.Tensor], present: torch.Tensor, ctx: Context) -> torch.Tensor:
        model.eval()
        return model(inputs, present)
