"""One SGD step of many clients at once: ``torch.func`` over stacked per-client parameters.

Each client's loss is the loop's loss (cross-entropy averaged over the real samples of its
batch, plus an optional method penalty such as FedProx's proximal term); ``vmap`` of
``grad_and_value`` gives every client its own gradient, and the update reproduces
``torch.optim.SGD`` (weight decay added to the gradient, ``buf = momentum * buf + grad`` with
``buf = grad`` on the first step, ``p -= lr * buf``). A client whose step is padding keeps its
parameters and momentum as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

Tensors = dict[str, torch.Tensor]
Penalty = Callable[[Tensors, Tensors], "torch.Tensor | None"]


@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


def make_client_loss(model: nn.Module, fixed: Tensors, anchor: Tensors, penalty: Penalty | None) -> Callable:
    """``loss(trainable, inputs, present, labels, weight)`` of ONE client, for ``torch.func``.

    ``fixed`` holds the tensors that do not train (buffers, frozen or unused parameters);
    ``anchor`` is the global model the penalty compares to.
    """

    def client_loss(trainable: Tensors, inputs: Tensors, present: torch.Tensor, labels: torch.Tensor,
                    weight: torch.Tensor) -> torch.Tensor:
        tensors = {**fixed, **trainable}
        logits = functional_call(model, tensors, (inputs, present))
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        loss = (per_sample * weight).sum() / weight.sum().clamp_min(1.0)
        if penalty is not None:
            params = {n: tensors[n] for n in anchor}
            extra = penalty(params, anchor)
            if extra is not None:
                loss = loss + extra
        return loss

    return client_loss


def make_step(client_loss: Callable, sgd: SGDSettings, masked: bool) -> Callable:
    """``step(params, bufs, inputs, present, labels, weight, active) -> (params, bufs, losses)``.

    All tensors carry the client dimension first. ``masked=False`` skips the padding mask for
    steps where every client is active (cheaper, same result).
    """
    per_client = vmap(grad_and_value(client_loss))

    def step(params: Tensors, bufs: Tensors, inputs: Tensors, present: torch.Tensor, labels: torch.Tensor,
             weight: torch.Tensor, active: torch.Tensor) -> tuple[Tensors, Tensors, torch.Tensor]:
        grads, losses = per_client(params, inputs, present, labels, weight)
        new_params, new_bufs = {}, {}
        for name, p in params.items():
            g = grads[name]
            if sgd.weight_decay:
                g = g + sgd.weight_decay * p
            if sgd.momentum:
                buf = bufs[name] * sgd.momentum + g
                direction = buf
            else:
                buf, direction = bufs[name], g
            new_p = p - sgd.lr * direction
            if masked:
                keep = active.reshape(-1, *([1] * (p.dim() - 1)))
                new_p = torch.where(keep, new_p, p)
                buf = torch.where(keep, buf, bufs[name])
            new_params[name], new_bufs[name] = new_p, buf
        return new_params, new_bufs, losses

    return step
