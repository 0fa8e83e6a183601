"""MAML as pure functions of a parameter dict: differentiable inner optimisers and the meta-gradient.

3FM (arXiv 2312.10179) runs MAML inside every client. Algorithm 1 of the paper adapts with one
plain gradient step, ``theta_u = theta - alpha * grad L_S(theta)``, and returns
``g_u = grad_theta L_Q(theta_u)``. The official notebook (``FederatedNet.meta_fit``) adapts with
``higher``'s differentiable **Adam** (a fresh optimiser per meta-step, lr 1e-5) for
``steps_per_task = 5`` steps. Both are here: ``inner_optimizer`` ``"sgd"`` (plain GD) and
``"adam"`` (torch.optim.Adam's update, betas (0.9, 0.999), eps 1e-8, zero initial moments).

Everything is a function of tensors, differentiated with ``torch.func.grad`` (grad of grad), so
the meta-gradient is exact to second order unless ``first_order`` drops the inner gradients'
dependence on theta (FOMAML).

Adam's ``sqrt(v)`` has an infinite derivative at ``v = 0``, which a parameter without support
gradient (a zeroed modality branch) hits; as in ``higher`` the derivative is taken as 0 there
(``safe_sqrt``), so such parameters get a finite meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import grad

ParamDict = dict[str, torch.Tensor]
LossFn = Callable[[ParamDict], torch.Tensor]
InnerOptimizer = Literal["sgd", "adam"]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) for x >= 0 with derivative 0 (not inf) where x == 0."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def sgd_step(params: ParamDict, grads: ParamDict, lr: float) -> ParamDict:
    return {k: params[k] - lr * grads[k] for k in params}


def adam_step(
    params: ParamDict, grads: ParamDict, moments: tuple[ParamDict, ParamDict], t: int, lr: float,
) -> tuple[ParamDict, tuple[ParamDict, ParamDict]]:
    """One torch.optim.Adam update (no weight decay, no amsgrad) at step ``t`` (1-based), differentiable."""
    b1, b2 = ADAM_BETAS
    m, v = moments
    m = {k: b1 * m[k] + (1 - b1) * grads[k] for k in params}
    v = {k: b2 * v[k] + (1 - b2) * grads[k] * grads[k] for k in params}
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    new = {k: params[k] - (lr / bc1) * m[k] / (safe_sqrt(v[k]) / bc2**0.5 + ADAM_EPS) for k in params}
    return new, (m, v)


def inner_adapt(
    support_loss: LossFn, params: ParamDict, lr: float, steps: int, optimizer: InnerOptimizer = "sgd",
    first_order: bool = False,
) -> ParamDict:
    """``steps`` inner updates of ``params`` on the support loss, differentiable in ``params``."""
    loss_grad = grad(support_loss)
    adapted = params
    moments = ({k: torch.zeros_like(v) for k, v in params.items()}, {k: torch.zeros_like(v) for k, v in params.items()})
    for t in range(1, steps + 1):
        g = loss_grad(adapted)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        if optimizer == "sgd":
            adapted = sgd_step(adapted, g, lr)
        elif optimizer == "adam":
            adapted, moments = adam_step(adapted, g, moments, t, lr)
        else:
            raise ValueError(f"unknown inner optimizer {optimizer!r}; use sgd or adam")
    return adapted


def meta_gradient(
    support_loss: LossFn, query_loss: LossFn, params: ParamDict, lr: float, steps: int,
    optimizer: InnerOptimizer = "sgd", first_order: bool = False,
) -> tuple[ParamDict, torch.Tensor]:
    """(d L_query(adapt(theta)) / d theta, L_query(adapt(theta))) at ``theta = params``."""

    def outer(theta: ParamDict) -> tuple[torch.Tensor, torch.Tensor]:
        loss = query_loss(inner_adapt(support_loss, theta, lr, steps, optimizer, first_order))
        return loss, loss.detach()

    return grad(outer, has_aux=True)(params)


def split_by_presence(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(support, query) positions: samples missing any modality (the client's limited modalities) and complete ones."""
    complete = present.all(dim=1)
    return torch.nonzero(~complete).flatten(), torch.nonzero(complete).flatten()


def split_by_fraction(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``ceil(fraction*n)`` positions (at least 1, leaving at least 1): support; the rest: query."""
    k = min(max(1, int(-(-fraction * n // 1))), n - 1)
    idx = torch.arange(n)
    return idx[:k], idx[k:]


__all__ = [
    "InnerOptimizer", "ParamDict", "adam_step", "inner_adapt", "meta_gradient", "safe_sqrt", "sgd_step",
    "split_by_fraction", "split_by_presence",
]
