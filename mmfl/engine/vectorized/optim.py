"""Optimiser steps of many clients at once, reproducing ``torch.optim`` on stacked parameters.

Every tensor carries the client dimension first. ``VectorOptimizer.from_torch`` reads the type
and settings of the optimiser a method builds (``Method.make_optimizer``) and reproduces its
update for SGD (momentum, weight decay), Adam and AdamW: those updates are element-wise, so on
stacked parameters they are the per-client updates, up to float rounding. A client whose step
is padding (``active`` false), or a parameter a client did not update in a step (``updated``
false: the loop's parameter without a gradient, which ``torch.optim`` skips), keeps its
parameter and optimiser state exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OptimSettings:
    kind: str  # "sgd", "adam" or "adamw"
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def unsupported(opt: torch.optim.Optimizer) -> str | None:
    """Why this optimiser's update is not reproduced here, or None."""
    if len(opt.param_groups) != 1:
        return f"{type(opt).__name__} with {len(opt.param_groups)} parameter groups"
    g = opt.param_groups[0]
    if type(opt) is torch.optim.SGD:
        if g.get("dampening") or g.get("nesterov") or g.get("maximize"):
            return "SGD with dampening, nesterov or maximize"
        return None
    if type(opt) in (torch.optim.Adam, torch.optim.AdamW):
        if g.get("amsgrad") or g.get("maximize") or (type(opt) is torch.optim.Adam and g.get("decoupled_weight_decay")):
            return f"{type(opt).__name__} with amsgrad, maximize or decoupled weight decay"
        return None
    return f"optimizer {type(opt).__name__}"


def settings_of(opt: torch.optim.Optimizer) -> OptimSettings:
    """The settings of ``opt`` (check ``unsupported`` first)."""
    g = opt.param_groups[0]
    if type(opt) is torch.optim.SGD:
        return OptimSettings("sgd", float(g["lr"]), float(g["momentum"]), float(g["weight_decay"]))
    kind = "adamw" if type(opt) is torch.optim.AdamW else "adam"
    return OptimSettings(kind, float(g["lr"]), 0.0, float(g["weight_decay"]), tuple(float(b) for b in g["betas"]),
                         float(g["eps"]))


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


class VectorOptimizer:
    """The optimiser state of a chunk of clients and its step (in place, under ``torch.no_grad``)."""

    def __init__(self, settings: OptimSettings, params: Mapping[str, torch.Tensor]):
        self.s = settings
        self.state: dict[str, Tensors] = {}
        self._calls = 0  # bound on every client's Adam step count (it grows by at most 1 per call)
        self._tables: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        for n, p in params.items():
            if settings.kind == "sgd":
                self.state[n] = {"buf": torch.zeros_like(p)}
            else:
                c = p.shape[0]
                self.state[n] = {"m": torch.zeros_like(p), "v": torch.zeros_like(p),
                                 "step": torch.zeros(c, dtype=p.dtype, device=p.device)}

    def step(self, params: Tensors, grads: Mapping[str, torch.Tensor], active: torch.Tensor,
             updated: Mapping[str, torch.Tensor] | None = None, all_active: bool | None = None) -> None:
        """One step of every client whose ``active`` is true. ``all_active``: whether every client is
        active, when the caller knows it on the host (else it is read from ``active``, a device sync)."""
        self._calls += 1
        if all_active is None:
            all_active = bool(active.all())
        if self.s.kind == "sgd" and not updated and all_active:
            self._sgd_all(params, grads)
            return
        for n, p in params.items():
            keep = active if updated is None or n not in updated else active & updated[n]
            self._one(p, grads[n], self.state[n], keep)

    def _sgd_all(self, params: Tensors, grads: Mapping[str, torch.Tensor]) -> None:
        """SGD when every client updates every parameter: ``torch.optim.SGD``'s ``_foreach`` arithmetic."""
        s = self.s
        names = list(params)
        p = [params[n] for n in names]
        g = [grads[n] for n in names]
        if s.weight_decay:
            g = torch._foreach_add(g, p, alpha=s.weight_decay)
        if s.momentum:
            b = [self.state[n]["buf"] for n in names]
            torch._foreach_mul_(b, s.momentum)
            torch._foreach_add_(b, g)
            g = b
        torch._foreach_add_(p, g, alpha=-s.lr)

    def _one(self, p: torch.Tensor, g: torch.Tensor, st: Tensors, keep: torch.Tensor) -> None:
        s = self.s
        k = _expand(keep, p)
        if s.kind == "sgd":
            if s.weight_decay:
                g = g + s.weight_decay * p
            if s.momentum:
                buf = torch.where(k, s.momentum * st["buf"] + g, st["buf"])
                st["buf"].copy_(buf)
                g = buf
            p.copy_(torch.where(k, p - s.lr * g, p))
            return
        b1, b2 = s.betas
        step = st["step"] + keep.to(st["step"].dtype)
        st["step"].copy_(step)
        base = p
        if s.weight_decay:
            if s.kind == "adamw":
                base = p * (1 - s.lr * s.weight_decay)
            else:
                g = g + s.weight_decay * p
        m = torch.where(k, st["m"].lerp(g, 1 - b1), st["m"])
        v = torch.where(k, torch.addcmul(st["v"] * b2, g, g, value=1 - b2), st["v"])  # addcmul: torch's rounding
        st["m"].copy_(m)
        st["v"].copy_(v)
        step_size, bc2_sqrt = self._corrections(step, p)
        denom = v.sqrt() / bc2_sqrt + s.eps
        p.copy_(torch.where(k, base - (step_size * m) / denom, p))

    def _corrections(self, step: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per client ``lr / (1 - b1**t)`` and ``sqrt(1 - b2**t)``, shaped to broadcast against ``like``.

        ``torch.optim.Adam`` computes them in Python floats and rounds them to the parameter's
        dtype; they are looked up in a table of exactly those values (no host sync), so that a
        client's step rounds as the loop's does. Step 0 (a client not yet active) reads step 1.
        """
        key = (like.dtype, like.device)
        table = self._tables.get(key)
        if table is None or table.shape[1] <= self._calls:
            b1, b2 = self.s.betas
            ts = [max(t, 1) for t in range(2 * self._calls + 16)]
            table = torch.tensor([[self.s.lr / (1 - b1**t) for t in ts], [(1 - b2**t) ** 0.5 for t in ts]],
                                 dtype=torch.float64).to(dtype=like.dtype, device=like.device)
            self._tables[key] = table
        rows = table.index_select(1, step.long().clamp_max(table.shape[1] - 1))
        return _expand(rows[0], like), _expand(rows[1], like)
