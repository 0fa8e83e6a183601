"""3FM (2023): MAML inside every client, FedAvg across clients, missing modality branches zeroed.

Each local batch is split into a support part (inner loop: ``inner_steps`` plain gradient
steps with ``inner_lr`` from the global weights) and a query part (outer loss of the adapted
weights). The gradient of the query loss with respect to the *pre-adaptation* weights (second
order through the inner steps unless ``first_order``) updates the client's weights with Adam
at ``outer_lr``; the server averages the clients' weights (FedAvg). A modality a sample lacks
contributes an all-zero branch output, as in the paper's zeroed branches.

Written with ``torch.func.functional_call`` and ``torch.func.grad`` so that the inner loop is a
pure function of a parameter dict and its derivative is exact.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import functional_call, grad
from torch.nn import functional as F

from mmfl.data.dataset import MultimodalDataset
from mmfl.state import RoundState
from mmfl.methods.base import Batch, Context, Method

ParamDict = dict[str, torch.Tensor]
Batch = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]


class ThreeFMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner_lr: float = Field(1e-5, gt=0, description="MAML inner-loop learning rate (paper: 0.00001)")
    outer_lr: float = Field(1e-3, gt=0, description="MAML outer (meta) learning rate, Adam (paper: 0.001)")
    inner_steps: int = Field(1, ge=1, description="Inner gradient steps per batch (one-step MAML; chosen default)")
    support_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each batch used as the support set (paper: 20% support, 80% query)")
    local_epochs: int = Field(5, ge=1, description="Local epochs per round (paper: 5); overrides train.local_epochs")
    first_order: bool = Field(False, description="Drop second-order terms of the meta-gradient (FOMAML)")


def zero_branch_forward(model: nn.Module, params: ParamDict, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    """Logits with the embedding of every absent modality set to exactly zero (a switched-off branch)."""
    subs = torch.zeros(present.shape[0], present.shape[1], model.head.in_features, dtype=torch.float32, device=present.device)
    return functional_call(model, params, (inputs, present), {"substitutes": subs})


def batch_loss(model: nn.Module, params: ParamDict, batch: Batch) -> torch.Tensor:
    inputs, present, labels = batch
    return F.cross_entropy(zero_branch_forward(model, params, inputs, present), labels)


def inner_adapt(model: nn.Module, params: ParamDict, support: Batch, lr: float, steps: int, first_order: bool = False) -> ParamDict:
    """``steps`` gradient steps ``theta <- theta - lr * dL_support/dtheta``, differentiable in ``params``."""
    loss_grad = grad(lambda p: batch_loss(model, p, support))
    adapted = params
    for _ in range(steps):
        g = loss_grad(adapted)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        adapted = {k: adapted[k] - lr * g[k] for k in adapted}
    return adapted


def meta_gradient(model: nn.Module, params: ParamDict, support: Batch, query: Batch, p: ThreeFMParams) -> tuple[ParamDict, torch.Tensor]:
    """(d query_loss(adapt(theta)) / d theta, query loss) for one support/query split."""

    def outer(theta: ParamDict) -> tuple[torch.Tensor, torch.Tensor]:
        loss = batch_loss(model, inner_adapt(model, theta, support, p.inner_lr, p.inner_steps, p.first_order), query)
        return loss, loss.detach()

    return grad(outer, has_aux=True)(params)


def split_support_query(idx: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``ceil(fraction*n)`` (at least 1, leaving at least 1) indices: support; the rest: query."""
    n = idx.numel()
    k = min(max(1, int(-(-fraction * n // 1))), n - 1)
    return idx[:k], idx[k:]


class ThreeFM(Method):
    Params = ThreeFMParams

    def make_optimizer(self, model: nn.Module, ctx: Context) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=ctx.params.outer_lr)

    def local_epochs(self, ctx: Context) -> int:
        return ctx.params.local_epochs

    def local_step(self, model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, state: RoundState,
                   ctx: Context, anchor) -> tuple[float, dict[str, float]] | None:
        """One meta-step: the batch splits into support and query; the outer optimiser takes the meta-gradient."""
        if len(batch) < 2:
            return None
        p: ThreeFMParams = ctx.params
        k = split_support_query(torch.arange(len(batch)), p.support_fraction)[0].numel()
        sup = ({n: v[:k] for n, v in batch.inputs.items()}, batch.present[:k], batch.labels[:k])
        qry = ({n: v[k:] for n, v in batch.inputs.items()}, batch.present[k:], batch.labels[k:])
        params = {n: t.detach() for n, t in model.named_parameters()}
        grads, loss = meta_gradient(model, params, sup, qry, p)
        for n, t in model.named_parameters():
            t.grad = grads[n].detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss), {}

    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        params = dict(model.named_parameters())
        return zero_branch_forward(model, params, inputs, present)

