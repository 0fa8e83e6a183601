"""3FM (2023): MAML inside every client, FedAvg across clients, missing modality branches zeroed.

The paper's protocol (arXiv 2312.10179, official notebook ``minhtcai/MLMF``): each client's
**support set holds its limited modalities and its query set all modalities**. The inner loop
adapts the global weights on the support loss; the query loss of the adapted weights,
differentiated with respect to the pre-adaptation weights (second order unless ``first_order``),
updates the client's weights with Adam at ``outer_lr``; the server averages the clients' weights
(FedAvg). A modality a sample lacks contributes an all-zero branch output, as the paper zeroes
branches.

Options (defaults: the paper; where the paper is silent, the official code):

* ``split``: ``presence`` (paper) takes the samples that miss a modality as the support and the
  complete samples as the query; with ``missing.pattern: subsets`` at ``rate`` 0.2 that is the
  paper's 20% limited support / 80% full query. ``batch`` splits each batch by position
  (first ``support_fraction`` support), both parts with the samples' own masks. A batch without
  limited or without complete samples falls back to the ``batch`` split (counted in
  ``fallback_splits``).
* ``batching``: ``full`` (official code) makes the client's whole shard one batch, one
  meta-step per local epoch; ``minibatch`` takes one meta-step per mini-batch of
  ``train.batch_size`` (the baselines' number of steps).
* ``inner_optimizer``/``inner_steps``: ``sgd``/1 is Algorithm 1 of the paper (one plain gradient
  step); the official code uses ``adam``/5 (higher's differentiable Adam, ``steps_per_task = 5``).
* ``local_epochs``: None uses ``train.local_epochs``, the budget every method shares; a number
  overrides it explicitly.

The math is in ``mmfl/methods/maml.py`` (pure functions of a parameter dict).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mmfl.methods import maml
from mmfl.methods.base import Batch, Context, Method
from mmfl.state import RoundState

ParamDict = dict[str, torch.Tensor]
Part = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]  # (inputs, present, labels) of a support or query set


class ThreeFMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner_lr: float = Field(1e-5, gt=0, description="MAML inner-loop learning rate (paper: 0.00001)")
    outer_lr: float = Field(
        1e-3, gt=0, description="MAML outer (meta) learning rate, Adam (paper: 0.001, its best; official code: 0.01)")
    inner_optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="Inner-loop update: sgd = plain GD (paper, Algorithm 1); adam = official code (higher)")
    inner_steps: int = Field(1, ge=1, description="Inner updates per meta-step (paper, Algorithm 1: 1; official code: 5)")
    split: Literal["presence", "batch"] = Field(
        "presence", description="presence: support = limited-modality samples, query = complete samples (paper); "
                                "batch: first support_fraction of each batch, own masks")
    batching: Literal["full", "minibatch"] = Field(
        "full", description="full: the shard is one batch, one meta-step per local epoch (official code); "
                            "minibatch: one meta-step per train.batch_size batch")
    support_fraction: float = Field(
        0.2, gt=0, lt=1, description="Support share of a batch for split: batch and the fallback (paper: 20%)")
    local_epochs: int | None = Field(
        None, ge=1, description="Local epochs; None = train.local_epochs (the shared budget; paper: 5)")
    first_order: bool = Field(False, description="Drop second-order terms of the meta-gradient (FOMAML)")


def zero_branch_forward(model: nn.Module, params: ParamDict, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    """Logits with the embedding of every absent modality set to exactly zero (a switched-off branch)."""
    subs = torch.zeros(present.shape[0], present.shape[1], model.head.in_features, dtype=torch.float32, device=present.device)
    return functional_call(model, params, (inputs, present), {"substitutes": subs})


def part_loss(model: nn.Module, params: ParamDict, part: Part) -> torch.Tensor:
    inputs, present, labels = part
    return F.cross_entropy(zero_branch_forward(model, params, inputs, present), labels)


def meta_gradient(model: nn.Module, params: ParamDict, support: Part, query: Part, p: ThreeFMParams) -> tuple[ParamDict, torch.Tensor]:
    """(d query_loss(adapt(theta)) / d theta, query loss) for one support/query pair."""
    return maml.meta_gradient(lambda q: part_loss(model, q, support), lambda q: part_loss(model, q, query), params,
                              p.inner_lr, p.inner_steps, p.inner_optimizer, p.first_order)


def support_query(present: torch.Tensor, p: ThreeFMParams) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(support rows, query rows, fell back) of a batch with presence rows ``present``."""
    if p.split == "presence":
        sup, qry = maml.split_by_presence(present)
        if len(sup) and len(qry):
            return sup, qry, False
    sup, qry = maml.split_by_fraction(present.shape[0], p.support_fraction)
    return sup, qry, p.split == "presence"


def take(batch: Batch, rows: torch.Tensor) -> Part:
    rows = rows.to(batch.labels.device)
    return {n: v[rows] for n, v in batch.inputs.items()}, batch.present[rows], batch.labels[rows]


class ThreeFM(Method):
    Params = ThreeFMParams
    summed_metrics = ("fallback_splits",)

    def make_optimizer(self, model: nn.Module, ctx: Context) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=ctx.params.outer_lr)

    def inexact_vectorized(self, ctx: Context) -> str | None:
        p: ThreeFMParams = ctx.params
        if p.inner_optimizer == "adam" and not p.first_order:
            return ("3FM's second-order meta-gradient through the inner Adam step amplifies float rounding beyond "
                    "1e-6 after a round (train.engine: vectorized trains these clients together anyway)")
        if ctx.cfg.model.fusion == "attention":
            return ("3FM with attention fusion: the outer Adam turns float rounding on the attention key bias "
                    "(exact gradient zero) into steps, beyond 1e-6 of the loop after a round "
                    "(train.engine: vectorized trains these clients together anyway)")
        return None

    def local_epochs(self, ctx: Context) -> int:
        return ctx.params.local_epochs or ctx.cfg.train.local_epochs

    def local_batch_size(self, ctx: Context, num_samples: int) -> int:
        return max(num_samples, 1) if ctx.params.batching == "full" else ctx.cfg.train.batch_size

    def local_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, state: RoundState,
                   ctx: Context, anchor) -> tuple[float, dict[str, float]] | None:
        """One meta-step: support and query from the batch, the outer optimiser takes the meta-gradient."""
        if len(batch) < 2:
            return None
        p: ThreeFMParams = ctx.params
        sup, qry, fell_back = support_query(batch.present, p)
        params = {n: t.detach() for n, t in model.named_parameters()}
        grads, loss = meta_gradient(model, params, take(batch, sup), take(batch, qry), p)
        for n, t in model.named_parameters():
            t.grad = grads[n].detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss), {"fallback_splits": float(fell_back)}

    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        params = dict(model.named_parameters())
        return zero_branch_forward(model, params, inputs, present)
