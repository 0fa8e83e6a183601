"""The Method interface every algorithm implements, with FedAvg-style defaults.

A method is a stateless object; all state lives in ``RoundState`` (server) and in the
``ClientUpdate`` a client returns, so the same method code runs in one process or across pods.

Every hook an engine may call is declared here:

- ``local_data`` -> per-sample tensors the local loop batches (inputs, presence, labels, extras)
- ``batch_loss`` -> the loss of one batch (and scalar metrics to average)
- ``penalty`` -> a term on the parameters themselves (FedProx); the per-client loop and the
  vectorized engine both add it, so it is written once
- ``local_step`` -> one optimiser step on a batch (MAML-style methods override it)
- ``updated_params`` -> which parameters a step updates (default: every one with a gradient)
- ``inexact_vectorized`` -> why clients trained together would differ from the loop beyond float
  rounding in a setting (``train.engine: auto`` then uses the loop)
- ``start_weights`` / ``training_shard`` / ``finish_update`` -> where a client starts (personal
  parts), which of its samples train, and what it sends back besides the trained model
- ``local_epochs`` / ``local_batch_size`` / ``make_optimizer`` -> the local budget and optimiser
- ``train_local`` / ``run_local`` -> THE local loop (seeded by (seed, round, client)); methods do not copy it
- ``vectorizable`` -> an ordinary class attribute, inherited like any other: True when the
  vectorized engine reproduces the method's local training from these hooks. Such a method's
  ``batch_loss`` (and ``updated_params``) must run under ``torch.func.vmap``: tensors only (no
  ``float()``/``.item()``, no Python branches on tensor values, no boolean indexing), padded
  samples left out through ``batch.weight`` (``masked_mean``), per-step inputs read from
  ``batch.step_data`` and per-client sums returned as non-scalar metrics (``LocalData.totals``),
  not from ``batch.aux``/``batch.index``/``batch.epoch``
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from mmfl.aggregation.robust_mean import robust_average
from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.models import MissingStrategy, MultimodalNet
from mmfl.models.masked import masked_cross_entropy, masked_mean  # noqa: F401 - re-exported for methods
from mmfl.state import ClientUpdate, RoundState


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed determined by the given integers (experiment seed, round, client, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class FeatureCacheLike(Protocol):
    def get_or_compute(self, backbone_id: str, dataset_id: str, compute: Any) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class Resources:
    """What the engine hands to methods, so that methods open nothing themselves.

    ``store``: the artifact store for ``store://`` backbone weights (None: plain local paths only);
    ``caches``: frozen-feature caches by mode (``store``, ``memory``; ``off`` has none).
    """

    store: Any = None
    caches: dict[str, FeatureCacheLike] = field(default_factory=dict)

    def feature_cache(self, mode: str) -> FeatureCacheLike | None:
        return self.caches.get(mode)


NO_RESOURCES = Resources()


def params_of(cfg: ExperimentConfig) -> Any:
    """The validated params that ``mmfl.methods.resolve`` found for ``cfg`` (engines resolve first)."""
    found = cfg.method.resolution
    if found is None:
        raise RuntimeError("method params of this config are not resolved: call mmfl.methods.resolve(cfg) first")
    return found.params


@dataclass
class Context:
    """What a step knows besides the state: config, resolved method params, round, client, resources."""

    cfg: ExperimentConfig
    spec: DataSpec
    round: int
    client_id: int = -1
    device: str = "cpu"
    resources: Resources = NO_RESOURCES

    @property
    def params(self) -> Any:
        """The method's validated params, resolved once per experiment config."""
        return params_of(self.cfg)

    def seed(self, *extra: int) -> int:
        return derive_seed(self.cfg.seed, self.round, self.client_id, *extra)


@dataclass
class LocalData:
    """Per-sample tensors of a client's shard as the local loop sees them (first dimension: samples)."""

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    labels: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    aux: dict[str, Any] = field(default_factory=dict)  # per-client, not per-sample (loop-only methods)
    # Per local step (first dimension: the client's step 0, 1, ...): e.g. FlexMod's step plan as a mask.
    per_step: dict[str, torch.Tensor] = field(default_factory=dict)
    # Sums over the local steps of the non-scalar metrics ``batch_loss`` returned (filled by the engines).
    totals: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: torch.Tensor, device: str | torch.device, epoch: int = 0, step: int = 0) -> Batch:
        return Batch({k: v[idx].to(device) for k, v in self.inputs.items()}, self.present[idx].to(device),
                     self.labels[idx].to(device), {k: v[idx].to(device) for k, v in self.extra.items()}, idx, epoch, step,
                     self.aux, None, {k: v[step].to(device) for k, v in self.per_step.items()})


@dataclass
class Batch:
    """One mini-batch: rows ``index`` of the client's ``LocalData``; ``step`` counts the client's steps."""

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    labels: torch.Tensor
    extra: dict[str, torch.Tensor]
    index: torch.Tensor | None
    epoch: int = 0
    step: int = 0
    aux: dict[str, Any] = field(default_factory=dict)
    weight: torch.Tensor | None = None  # (B,) 1 for real samples, 0 for padding; None: every sample is real
    step_data: dict[str, torch.Tensor] = field(default_factory=dict)  # row ``step`` of ``LocalData.per_step``

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def iterate_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]




LossResult = torch.Tensor | tuple[torch.Tensor, Mapping[str, "float | torch.Tensor"]]


_PROBE_N = 1_000_003  # a shard size no real batch size equals: a method whose batch is its shard returns it


def _batch_label(size: int) -> int | str:
    return "full" if size == _PROBE_N else size


def _describe_optimizer(build: Any) -> str:
    """``SGD(lr=0.02, momentum=0.9)``: the optimiser type and its non-zero step settings."""
    try:
        opt = build()
    except Exception as exc:  # a method whose optimiser needs its real model: say so, do not guess
        return f"custom ({type(exc).__name__})"
    group = opt.param_groups[0]
    parts = [f"lr={group['lr']:g}"]
    for key in ("momentum", "weight_decay"):
        if group.get(key):
            parts.append(f"{key}={group[key]:g}")
    return f"{type(opt).__name__}({', '.join(parts)})"


class Method:
    """Defaults implement FedAvg with the explicit missing-modality path of ``MultimodalNet``.

    ``name`` is set by the registry (``mmfl/methods/registry.py``), where each name is written once.
    """

    name: str = "base"
    Params: ClassVar[type[BaseModel]] = NoParams
    missing_strategy: ClassVar[MissingStrategy] = "mask"
    uses_prototypes: ClassVar[bool] = False
    uses_schedule: ClassVar[bool] = False
    vectorizable: ClassVar[bool] = False
    summed_metrics: ClassVar[tuple[str, ...]] = ()  # scalars of batch_loss summed over steps (others: averaged)

    # ---- model and state -------------------------------------------------------------------
    def build_model(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> nn.Module:
        return MultimodalNet(spec, cfg.model, self.missing_strategy)

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, 0xC0FFEE))
            model = self.build_model(spec, cfg, resources)
        tensors = {f"model/{k}": v.detach().clone() for k, v in model.state_dict().items()}
        return RoundState(0, tensors, {"method": self.name, "data_spec": spec.to_json()})

    def load_model(self, weights: Mapping[str, torch.Tensor], ctx: Context) -> nn.Module:
        model = self.build_model(ctx.spec, ctx.cfg, ctx.resources)
        model.load_state_dict(dict(weights))
        return model.to(ctx.device)

    # ---- client side -------------------------------------------------------------------------
    def client_update(self, state: RoundState, shard: MultimodalDataset, ctx: Context) -> ClientUpdate:
        """Start from ``start_weights``, train on ``training_shard``, hand back ``finish_update``."""
        model = self.load_model(self.start_weights(state, ctx), ctx)
        data = self.local_data(model, self.training_shard(shard, ctx), state, ctx)
        metrics = self.run_local(model, data, ctx, state)
        weights = {f"model/{k}": v.detach().cpu() for k, v in model.state_dict().items()}
        return self.finish_update(state, shard, weights, data, metrics, ctx)

    def start_weights(self, state: RoundState, ctx: Context) -> dict[str, torch.Tensor]:
        """The model weights client ``ctx.client_id`` starts its local training from (default: the global model)."""
        return state.model_weights()

    def training_shard(self, shard: MultimodalDataset, ctx: Context) -> MultimodalDataset:
        """The samples a client trains on (default: all; FlexMod keeps a validation part aside)."""
        return shard

    def finish_update(self, state: RoundState, shard: MultimodalDataset, weights: Mapping[str, torch.Tensor],
                      data: LocalData, metrics: dict[str, float], ctx: Context) -> ClientUpdate:
        """The client's update from its trained ``weights`` (``model/``-prefixed; read-only, possibly a
        row of a stack of clients), its ``LocalData`` (with ``totals``) and metrics."""
        return ClientUpdate(ctx.client_id, len(data), weights, metrics)

    def inexact_vectorized(self, ctx: Context) -> str | None:
        """Why training this method's clients together, though supported, is known to differ from the loop
        by more than float rounding (1e-6 after a round) in this setting, or None. ``train.engine: auto``
        then trains them one by one, saying this; ``vectorized`` trains them together anyway."""
        return None

    def updated_params(self, model: nn.Module, batch: Batch, ctx: Context) -> Mapping[str, torch.Tensor] | None:
        """Per trainable parameter name, a 0-dim bool tensor: does this step update it? None: every
        parameter with a gradient (the loop leaves the others to ``torch.optim``, which skips them)."""
        return None

    def local_data(self, model: nn.Module, shard: MultimodalDataset, state: RoundState, ctx: Context) -> LocalData:
        """What the local loop batches; feature methods add cached frozen features to ``extra``."""
        return LocalData(dict(shard.inputs), shard.present, shard.labels)

    def local_epochs(self, ctx: Context) -> int:
        return ctx.cfg.train.local_epochs

    def local_batch_size(self, ctx: Context, num_samples: int) -> int:
        """Mini-batch size of the local loop (3FM's full-batch option returns ``num_samples``)."""
        return ctx.cfg.train.batch_size

    def budget(self, ctx: Context) -> dict[str, Any]:
        """The local training budget one client of this method gets in a round: epochs, batch size, optimiser.

        Read from ``local_epochs`` and ``make_optimizer`` themselves (the optimiser is built over a
        one-weight probe model), so a method that overrides them reports it without extra code.
        """
        return {"local_epochs": self.local_epochs(ctx), "batch_size": _batch_label(self.local_batch_size(ctx, _PROBE_N)),
                "optimizer": _describe_optimizer(lambda: self.make_optimizer(nn.Linear(1, 1), ctx))}

    def overrides(self, ctx: Context) -> dict[str, Any]:
        """Shared training settings this method replaces with its own: ``{"train.<field>": value}``.

        Printed at the start of its run, logged as MLflow params ``override.*``, and the reason a
        report flags comparisons whose methods train with unequal local budgets.
        """
        shared = {"local_epochs": Method.local_epochs(self, ctx),
                  "batch_size": _batch_label(Method.local_batch_size(self, ctx, _PROBE_N)),
                  "optimizer": _describe_optimizer(lambda: Method.make_optimizer(self, nn.Linear(1, 1), ctx))}
        return {f"train.{k}": v for k, v in self.budget(ctx).items() if shared.get(k) != v}

    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context) -> LossResult:
        """The task loss of one batch; may return ``(loss, {name: scalar})`` to average per step."""
        return masked_cross_entropy(model(batch.inputs, batch.present), batch.labels, batch.weight)

    def penalty(self, params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], ctx: Context) -> torch.Tensor | None:
        """A term on the trainable parameters (``anchor``: the round's global model), or None.

        Called with the model's named parameters by the loop and with functional (stacked)
        parameters by the vectorized engine.
        """
        return None

    def make_optimizer(self, model: nn.Module, ctx: Context) -> torch.optim.Optimizer:
        t = ctx.cfg.train
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def local_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, state: RoundState,
                   ctx: Context, anchor: Mapping[str, torch.Tensor]) -> tuple[float, Mapping[str, float]] | None:
        """One optimiser step on ``batch``: (loss, scalars), or None to skip the batch."""
        out = self.batch_loss(model, batch, state, ctx)
        loss, extra = (out, {}) if isinstance(out, torch.Tensor) else out
        pen = self.penalty(dict(model.named_parameters()), anchor, ctx)
        if pen is not None:
            loss = loss + pen
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        updated = self.updated_params(model, batch, ctx)
        if updated is not None:
            for name, p in model.named_parameters():
                if name in updated and not bool(updated[name]):
                    p.grad = None
        optimizer.step()  # parameters without a gradient (frozen parts) are left untouched
        return float(loss.detach()), extra

    def train_local(self, model: nn.Module, shard: MultimodalDataset, ctx: Context, state: RoundState) -> dict[str, float]:
        """Local training on a shard: ``run_local`` over ``local_data``."""
        return self.run_local(model, self.local_data(model, shard, state, ctx), ctx, state)

    def run_local(self, model: nn.Module, data: LocalData, ctx: Context, state: RoundState) -> dict[str, float]:
        """The local loop: ``local_epochs`` over shuffled mini-batches; all randomness seeded by (seed, round, client)."""
        opt = self.make_optimizer(model, ctx)
        anchor = {k: v.to(ctx.device) for k, v in state.model_weights().items()}
        gen = torch.Generator().manual_seed(ctx.seed())
        sums: dict[str, float] = {"train_loss": 0.0}
        steps = 0
        model.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed(1))
            for epoch in range(self.local_epochs(ctx)):
                for idx in iterate_batches(len(data), self.local_batch_size(ctx, len(data)), gen):
                    done = self.local_step(model, data.take(idx, ctx.device, epoch, steps), opt, state, ctx, anchor)
                    if done is None:
                        continue
                    loss, extra = done
                    sums["train_loss"] += loss
                    for k, v in extra.items():
                        if isinstance(v, torch.Tensor) and v.dim() > 0:
                            data.totals[k] = data.totals[k] + v.detach() if k in data.totals else v.detach().clone()
                        else:
                            sums[k] = sums.get(k, 0.0) + float(v)
                    steps += 1
        out = {k: v if k in self.summed_metrics else v / max(steps, 1) for k, v in sums.items()}
        out["local_steps"] = float(steps)
        return out

    def client_prototypes(
        self, state: RoundState, update: ClientUpdate, shard: MultimodalDataset, ctx: Context
    ) -> dict[str, torch.Tensor] | None:
        """Tensors a client uploads besides its model (prototype methods override)."""
        return None

    # ---- server side -------------------------------------------------------------------------
    def average(self, state: RoundState, models: list, weights: list[float], ctx: Context) -> dict[str, torch.Tensor]:
        """The server's combination of client models: ``reliability.aggregation`` (default: the weighted mean)."""
        return robust_average(models, weights, state.model_weights(), ctx.cfg.reliability.aggregation)

    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        weights = self.average(state, [u.model_weights() for u in updates], [u.num_samples for u in updates], ctx)
        return RoundState(state.round + 1, state.with_model(weights), dict(state.meta))

    def schedule(self, state: RoundState, ctx: Context, eval_metrics: dict[str, Any] | None = None) -> RoundState:
        return state

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs: dict[str, torch.Tensor], present: torch.Tensor, ctx: Context) -> torch.Tensor:
        model.eval()
        return model(inputs, present)
