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

from mmfl.models.masked import masked_mean

Tensors = dict[str, torch.Tensor]
Penalty = Callable[[Tensors, Tensors], "torch.Tensor | None"]


@dataclass(frozen=True)
class SGDSettings:
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


def batched_grad(client_loss: Callable, params: Tensors, *args, has_aux: bool = False, transform: bool = False):
    """Every client's gradient of its own loss: ``(grads, losses)`` or ``(grads, (losses, aux))``.

    The per-client losses come from ``vmap`` of ``client_loss`` over the stacked ``params``; as each
    client's loss depends only on its own row, one ordinary backward pass of their sum gives each
    client's gradient in its row (what ``vmap(grad(...))`` computes, without the start-up cost of
    ``torch.func.grad``, whose first call imports the compiler stack, several seconds). A parameter
    a loss does not use gets a zero gradient. ``transform=True`` uses ``vmap(grad_and_value(...))``
    itself, for layers that have no batching rule outside ``grad`` (``nn.GRU`` is decomposed there).
    """
    if transform:
        return vmap(grad_and_value(client_loss, has_aux=has_aux))(params, *args)
    with torch.enable_grad():
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        out = vmap(client_loss)(leaves, *args)
        losses, aux = out if has_aux else (out, None)
        found = torch.autograd.grad(losses.sum(), list(leaves.values()), allow_unused=True)
    grads = {n: g if g is not None else torch.zeros_like(leaves[n]) for n, g in zip(leaves, found)}
    losses = losses.detach()
    return (grads, (losses, aux)) if has_aux else (grads, losses)


def make_client_loss(model: nn.Module, fixed: Tensors, anchor: Tensors, penalty: Penalty | None) -> Callable:
    """``loss(trainable, inputs, present, labels, weight)`` of ONE client, for ``torch.func``.

    ``fixed`` holds the tensors that do not train (buffers, frozen or unused parameters);
    ``anchor`` is the global model the penalty compares to.
    """

    def client_loss(trainable: Tensors, inputs: Tensors, present: torch.Tensor, labels: torch.Tensor,
                    weight: torch.Tensor) -> torch.Tensor:
        tensors = {**fixed, **trainable}
        logits = functional_call(model, tensors, (inputs, present))
        loss = masked_mean(F.cross_entropy(logits, labels, reduction="none"), weight)
        if penalty is not None:
            params = {n: tensors[n] for n in anchor}
            extra = penalty(params, anchor)
            if extra is not None:
                loss = loss + extra
        return loss

    return client_loss


def make_step(client_loss: Callable, sgd: SGDSettings, masked: bool, transform: bool = False,
              swap: bool = False) -> Callable:
    """``step(params, bufs, inputs, present, labels, weight, active) -> losses``, updating in place.

    All tensors carry the client dimension first; ``params`` and ``bufs`` (momentum) are
    overwritten with their values after the step, with ``torch.optim.SGD``'s arithmetic
    (``buf = momentum * buf + grad``, ``p -= lr * buf``) in ``_foreach`` ops. ``masked=False``
    skips the padding mask for steps where every client is active (cheaper, same result).
    ``swap=True`` lets the step put the new momentum in ``bufs`` by reference (the fresh gradient
    tensor it was computed in) instead of copying it into the old buffer: two fewer passes over
    the stacked parameters, for callers that do not need ``bufs``' tensors to stay the same
    objects (a CUDA graph does).
    """
    def per_client(*args):
        return batched_grad(client_loss, *args, transform=transform)

    def step(params: Tensors, bufs: Tensors, inputs: Tensors, present: torch.Tensor, labels: torch.Tensor,
             weight: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        grads, losses = per_client(params, inputs, present, labels, weight)
        names = list(params)
        p = [params[n] for n in names]
        g = [grads[n] for n in names]
        b = [bufs[n] for n in names]
        if sgd.weight_decay:
            torch._foreach_add_(g, p, alpha=sgd.weight_decay)
        if not masked:
            if sgd.momentum and swap:
                torch._foreach_add_(g, b, alpha=sgd.momentum)  # g becomes the new momentum buffer
                bufs.update(zip(names, g))
            elif sgd.momentum:
                torch._foreach_mul_(b, sgd.momentum)
                torch._foreach_add_(b, g)
                g = b
            torch._foreach_add_(p, g, alpha=-sgd.lr)
            return losses
        new_b = torch._foreach_add(torch._foreach_mul(b, sgd.momentum), g) if sgd.momentum else g
        new_p = torch._foreach_add(p, new_b, alpha=-sgd.lr)
        for i, name in enumerate(names):
            keep = active.reshape(-1, *([1] * (p[i].dim() - 1)))
            p[i].copy_(torch.where(keep, new_p[i], p[i]))
            if sgd.momentum:
                b[i].copy_(torch.where(keep, new_b[i], b[i]))
        return losses

    return step
