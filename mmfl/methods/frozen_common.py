"""Pieces shared by the methods that train small modules on top of frozen foundation models."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from mmfl.data.types import DataSpec
from mmfl.engine.state import ClientUpdate, RoundState
from mmfl.errors import ConfigError
from mmfl.methods.base import Context, iterate_batches

log = logging.getLogger("mmfl.communication")


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Payload size of a tensor dict (what travels), excluding the container's small header."""
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def image_text_roles(spec: DataSpec, method: str) -> tuple[str, str]:
    """(image modality, text modality) of a two-modality image+text dataset.

    The text modality may hold token ids (integer tensor) or precomputed sentence features (float).
    """
    images = [m.name for m in spec.modalities if m.kind == "image"]
    if len(spec.modalities) != 2 or len(images) != 1:
        raise ConfigError(
            f"method.name = {method!r}: needs exactly one image and one text modality, got "
            f"{[(m.name, m.kind) for m in spec.modalities]}"
        )
    other = [m.name for m in spec.modalities if m.name != images[0]][0]
    return images[0], other


def make_optimizer(params, kind: str, ctx: Context) -> torch.optim.Optimizer:
    t = ctx.cfg.train
    params = [p for p in params if p.requires_grad]
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def train_on_features(
    model: nn.Module,
    features: Mapping[str, torch.Tensor],
    ctx: Context,
    optimizer: torch.optim.Optimizer,
    step_loss: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]],
) -> dict[str, float]:
    """Local epochs of mini-batch training over cached per-sample features.

    ``features`` holds (N, ...) tensors (including ``labels`` and ``present``); ``step_loss``
    returns the loss of a batch and extra scalars to average. Seeded by (seed, round, client).
    """
    t = ctx.cfg.train
    n = int(features["labels"].shape[0])
    gen = torch.Generator().manual_seed(ctx.seed())
    sums: dict[str, float] = {"train_loss": 0.0}
    steps = 0
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed(1))
        for _ in range(t.local_epochs):
            for idx in iterate_batches(n, t.batch_size, gen):
                batch = {k: v[idx].to(ctx.device) for k, v in features.items()}
                loss, extra = step_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["train_loss"] += float(loss.detach())
                for k, v in extra.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                steps += 1
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out["local_steps"] = float(steps)
    return out


def record_communication(method: str, state: RoundState, updates: Sequence[ClientUpdate]) -> None:
    """Append this round's traffic to ``state.meta["communication"]`` and log it.

    Up: what the clients reported sending (``bytes_up``); down: the trainable model part of the
    new state, sent to each of the round's clients.
    """
    up = int(sum(u.metrics.get("bytes_up", 0.0) for u in updates))
    down = tensor_bytes({k: v for k, v in state.tensors.items() if k.startswith("model/")}) * len(updates)
    log.info("%s round %d: %d clients, %d bytes up, %d bytes down", method, state.round, len(updates), up, down)
    record = {"round": state.round, "clients": len(updates), "bytes_up": up, "bytes_down": down}
    state.meta["communication"] = list(state.meta.get("communication", [])) + [record]
