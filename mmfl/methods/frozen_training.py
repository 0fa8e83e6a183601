"""The base of methods that train small modules on top of frozen foundation models, and their helpers."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.state import ClientUpdate, RoundState, StackedRow
from mmfl.errors import ConfigError
from mmfl.methods.base import Context, LocalData, Method

log = logging.getLogger("mmfl.communication")


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Payload size of a tensor dict (what travels), excluding the container's small header.

    A row of a stack of clients (``StackedRow``) is sized from its shapes, without reading it.
    """
    if isinstance(tensors, StackedRow):
        shapes = (tensors.shape_dtype(k) for k in tensors)
        return int(sum(math.prod(shape) * dtype.itemsize for shape, dtype in shapes))
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
    """AdamW or SGD over the trainable parameters (the frozen backbone has none)."""
    t = ctx.cfg.train
    params = [p for p in params if p.requires_grad]
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


class FrozenBackboneMethod(Method):
    """A method that trains small modules over cached features of a frozen backbone.

    ``local_data`` carries the cached features in ``extra`` (computed by the frozen backbone alone,
    so they do not depend on the weights a client starts from); the optimiser is
    ``params.optimizer``; ``finish_update`` reports the update's payload size (``model_bytes``,
    ``bytes_up``).
    """

    def make_optimizer(self, model: nn.Module, ctx: Context) -> torch.optim.Optimizer:
        return make_optimizer(model.parameters(), ctx.params.optimizer, ctx)

    def finish_update(self, state: RoundState, shard: MultimodalDataset, weights: Mapping[str, torch.Tensor],
                      data: LocalData, metrics: dict[str, float], ctx: Context) -> ClientUpdate:
        return self.trained_update(weights, len(shard), metrics, ctx)

    def trained_update(self, weights: Mapping[str, torch.Tensor], shard_size: int, metrics: dict[str, float],
                       ctx: Context, extra: Mapping[str, torch.Tensor] | None = None) -> ClientUpdate:
        """The update of locally trained ``model/`` weights (plus ``extra`` tensors), with its payload size
        in the metrics. A row of the vectorized engine's stack stays where it is when nothing joins it."""
        metrics = dict(metrics)
        metrics["model_bytes"] = float(tensor_bytes(weights))
        metrics["bytes_up"] = metrics["model_bytes"] + float(tensor_bytes(extra or {}))
        if isinstance(weights, StackedRow) and not extra:
            return ClientUpdate(ctx.client_id, shard_size, weights, metrics)
        tensors = {k: v.detach().cpu().clone() for k, v in weights.items()}
        tensors.update(extra or {})
        return ClientUpdate(ctx.client_id, shard_size, tensors, metrics)

    def next_state(self, state: RoundState, tensors: dict[str, torch.Tensor], meta: dict, updates: Sequence[ClientUpdate]) -> RoundState:
        """The state after this round, with the round's traffic recorded."""
        new = RoundState(state.round + 1, tensors, meta)
        record_communication(self.name, new, updates)
        return new


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
