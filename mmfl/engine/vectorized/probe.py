"""Can a model be trained with ``vmap`` over clients, and which parameters does it really use?

Some models cannot: dropout draws different random numbers under ``vmap`` than in the
per-client loop, batch norm mutates running statistics, and recurrent layers (``nn.GRU``)
have no batching rule or silently keep their cached flat weights. Rather than trusting a
list, the probe runs the batched gradient on a tiny batch for two clients with different
weights and compares it with ordinary autograd on each client; any error or mismatch means
"use the loop". The same reference pass finds parameters that receive no gradient (for
example the placeholders of the zero-fill model): the loop's SGD skips them, so the
vectorized engine must treat them as fixed too.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mmfl.engine.vectorized.step import batched_grad

Tensors = dict[str, torch.Tensor]


def static_reason(model: nn.Module) -> str | None:
    """A reason the model cannot match the loop under vmap, found without running it."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"dropout p={module.p} in {name or 'model'} (random masks under vmap differ from the loop)"
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            return f"batch norm {name} keeps running statistics"
    return None


def unused_parameters(model: nn.Module, inputs: Tensors, present: torch.Tensor, labels: torch.Tensor,
                      penalty: Callable[[Tensors, Tensors], torch.Tensor | None] | None = None,
                      anchor: Tensors | None = None) -> set[str]:
    """Trainable parameters that get no gradient (``grad is None``) in an ordinary backward pass of
    the loop's loss: cross-entropy plus ``penalty(params, anchor)`` (a parameter only the penalty
    reaches gets a gradient, so the loop's SGD decays it and moves its momentum)."""
    ref = copy.deepcopy(model)
    ref.zero_grad(set_to_none=True)
    loss = F.cross_entropy(ref(inputs, present), labels)
    extra = penalty(dict(ref.named_parameters()), anchor or {}) if penalty is not None else None
    (loss if extra is None else loss + extra).backward()
    return {n for n, p in ref.named_parameters() if p.requires_grad and p.grad is None}


def perturbed_pair(params: Tensors) -> tuple[list[Tensors], Tensors]:
    """Two clients for a probe: ``params`` itself and a seeded perturbation of it; also stacked (2, ...)."""
    gen = torch.Generator().manual_seed(1234)
    clients = [{n: p + scale * torch.randn(p.shape, generator=gen).to(p) for n, p in params.items()}
               for scale in (0.0, 0.05)]
    return clients, {n: torch.stack([c[n] for c in clients]) for n in params}


def probe_reason(
    model: nn.Module, client_loss: Callable, trainable: Tensors,
    inputs: Tensors, present: torch.Tensor, labels: torch.Tensor, tol: float = 1e-4, transform: bool = False,
) -> str | None:
    """None if the batched gradient of two perturbed clients equals per-client autograd, else why not."""
    clients, stacked = perturbed_pair(trainable)
    rep = lambda t: torch.stack([t, t])  # noqa: E731 - same batch for both clients
    weight = torch.ones(labels.shape[0], device=labels.device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grads, _ = batched_grad(client_loss, stacked, {k: rep(v) for k, v in inputs.items()}, rep(present),
                                    rep(labels), rep(weight), transform=transform)
    except Exception as exc:  # noqa: BLE001 - any failure of the transform means "use the loop"
        return f"vmap over clients failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for w in caught:  # vmap runs an operator client by client when it has no batching rule: no gain
        if "batching rule" in str(w.message).lower():
            return f"vmap over clients has no batching rule: {str(w.message).splitlines()[0][:200]}"
    for j, client in enumerate(clients):
        ref = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in ref.named_parameters():
                if n in client:
                    p.copy_(client[n])
        ref.zero_grad(set_to_none=True)
        F.cross_entropy(ref(inputs, present), labels).backward()
        for n, p in ref.named_parameters():
            if n not in client:
                continue
            expected = p.grad if p.grad is not None else torch.zeros_like(p)
            if not torch.allclose(grads[n][j], expected, rtol=tol, atol=tol):
                err = float((grads[n][j] - expected).abs().max())
                return f"vmap gradient of {n} differs from autograd by {err:.3g}"
    return None
