"""The vectorized client engine: all sampled clients of a round train together.

``client_train_vectorized`` returns the same ``ClientUpdate``s as the per-client loop
(``Method.client_update``): same batch order, same SGD-with-momentum arithmetic, unequal client
sizes handled by padding and masks, so FedAvg after a round agrees with the loop to float
rounding. Per-client parameters and momentum are stacked along a client dimension and one
``vmap``-ed gradient step advances a whole chunk of ``train.vector_chunk`` clients.

It falls back to the loop, saying why in the log, when
- the method does not declare ``vectorizable = True`` on its own class (custom local losses
  or client logic that this engine does not reproduce), or
- the model cannot be vmapped faithfully (dropout > 0, batch norm, layers without batching
  rules such as ``nn.GRU``; see ``vector_probe``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from mmfl.aggregation.stacked import ClientStack
from mmfl.config import ExperimentConfig
from mmfl.data.types import DataSpec, MultimodalDataset
from mmfl.engine.state import ClientUpdate, RoundState
from mmfl.engine.vector_step import SGDSettings
from mmfl.engine.vector_trainer import VectorTrainer
from mmfl.methods import Method, get_method
from mmfl.methods.base import Context

log = logging.getLogger(__name__)

_TRAINERS: OrderedDict[str, VectorTrainer | str] = OrderedDict()  # setting -> trainer, or why it falls back
_MAX_TRAINERS = 4
# Seconds spent by the last call: on the device (training) and turning results into ClientUpdates.
last_timing: dict[str, float] = {}
_WARNED: set[str] = set()


def method_reason(method: Method) -> str | None:
    """Why a method's local training is not reproduced here, or None when it is."""
    if not vars(type(method)).get("vectorizable", False):
        return f"method {method.name!r} does not declare vectorizable = True (custom local training)"
    return None


def loop_train(method: Method, cfg: ExperimentConfig, state: RoundState,
               shards: Mapping[int, MultimodalDataset], client_ids: Sequence[int]) -> list[ClientUpdate]:
    """The per-client loop of ``steps.client_train``, used as the fallback."""
    spec = DataSpec.from_json(state.meta["data_spec"])
    return [method.client_update(state, shards[cid], Context(cfg, spec, state.round + 1, cid, cfg.train.device))
            for cid in client_ids]


def _setting_key(method: Method, cfg: ExperimentConfig, spec: DataSpec, cuda_graph: bool, static_buffers: bool) -> str:
    t = cfg.train
    return json.dumps([type(method).__module__, type(method).__qualname__, cfg.model.model_dump(), spec.to_json(),
                       cfg.method.params, t.lr, t.momentum, t.weight_decay, t.device, t.compile, cuda_graph,
                       static_buffers],
                      sort_keys=True, default=str)


def _trainer(method: Method, cfg: ExperimentConfig, state: RoundState, spec: DataSpec,
             sample: MultimodalDataset, cuda_graph: bool, static_buffers: bool) -> VectorTrainer | str:
    """A prepared trainer for this setting (reused across rounds), or the reason to use the loop."""
    key = _setting_key(method, cfg, spec, cuda_graph, static_buffers)
    found = _TRAINERS.get(key)
    if found is not None:
        _TRAINERS.move_to_end(key)
        return found
    ctx = Context(cfg, spec, state.round + 1, -1, cfg.train.device)
    t = cfg.train
    penalty_fn = getattr(method, "functional_penalty", None)
    penalty = (lambda params, anchor: penalty_fn(params, anchor, ctx)) if penalty_fn is not None else None
    model = method.load_model(state.model_weights(), ctx)
    trainer = VectorTrainer(model, state.model_weights(), SGDSettings(t.lr, t.momentum, t.weight_decay),
                            torch.device(t.device), penalty=penalty, compile=t.compile,
                            cuda_graph=cuda_graph, static_buffers=static_buffers)
    reason = trainer.prepare(sample)
    found = reason if reason else trainer
    _TRAINERS[key] = found
    while len(_TRAINERS) > _MAX_TRAINERS:
        _TRAINERS.popitem(last=False)
    return found


def _device_memory_low(result, device: torch.device) -> bool:
    """Less free device memory than twice what this chunk's trained weights take."""
    held = sum(v.numel() * v.element_size() for v in result.params.values())
    free, _ = torch.cuda.mem_get_info(device)
    return free < 2 * held


def client_train_vectorized(
    cfg: ExperimentConfig, state: RoundState, shards: Mapping[int, MultimodalDataset], client_ids: Sequence[int],
    method: Method | None = None, cuda_graph: bool = True, static_buffers: bool = False,
) -> list[ClientUpdate]:
    """Train ``client_ids`` from the global state of the round, ``train.vector_chunk`` clients at a time.

    ``method`` overrides the configured method (benchmarks pass their own model); ``cuda_graph``
    allows capturing each chunk's local steps as one CUDA graph when ``train.device`` is a GPU;
    ``static_buffers`` runs chunks through the graph's fixed buffers without capturing (a check
    of that path on any device).

    Each chunk's trained weights stay stacked on the training device (a ``ClientStack``); every
    update's ``tensors`` is a read-only ``StackView`` of its row, copied to the host only when
    read. FedAvg's mean and update screening read the stack directly.
    """
    method = method or get_method(cfg.method.name)
    client_ids = list(client_ids)
    if not client_ids:
        return []
    reason = method_reason(method)
    if reason is None:
        spec = DataSpec.from_json(state.meta["data_spec"])
        found = _trainer(method, cfg, state, spec, shards[client_ids[0]], cuda_graph, static_buffers)
        reason = found if isinstance(found, str) else None
    if reason is not None:
        # Said loudly once per setting and process, then quietly every further round.
        level = logging.INFO if reason in _WARNED else logging.WARNING
        _WARNED.add(reason)
        log.log(level, "vectorized engine: falling back to the per-client loop: %s", reason)
        return loop_train(method, cfg, state, shards, client_ids)
    trainer: VectorTrainer = found
    global_weights = state.model_weights()
    trainer.set_global(global_weights)
    t, round_index = cfg.train, state.round + 1
    updates: dict[int, ClientUpdate] = {}
    t0 = time.perf_counter()
    # Clients of similar size share a chunk, so few steps are padding; results keep the given order.
    # Chunks are queued without waiting for the device: the host prepares the next chunk while the
    # device trains the previous one, and everything is read back once at the end.
    by_size = sorted(range(len(client_ids)), key=lambda i: len(shards[client_ids[i]]))
    chunks = []
    for start in range(0, len(by_size), t.vector_chunk):
        positions = by_size[start : start + t.vector_chunk]
        ids = [client_ids[i] for i in positions]
        seeds = [Context(cfg, spec, round_index, cid).seed() for cid in ids]
        result = trainer.train_chunk([shards[cid] for cid in ids], seeds, t.batch_size, t.local_epochs)
        if trainer.device.type == "cuda" and _device_memory_low(result, trainer.device):
            # Results stay on the device unless they would crowd out the next chunk's training.
            log.info("vectorized engine: device memory low, keeping a chunk's trained weights on the host")
            result.params = {k: v.cpu() for k, v in result.params.items()}
        chunks.append((positions, ids, result))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    t1 = time.perf_counter()
    shared = {f"model/{k}": global_weights[k] for k in trainer.state_keys if k not in trainer.trainable}
    order = [f"model/{k}" for k in trainer.state_keys]
    for positions, ids, result in chunks:
        losses, steps = result.mean_loss.cpu().tolist(), result.steps.cpu().tolist()
        stack = ClientStack({f"model/{k}": v.detach() for k, v in result.params.items()}, shared, order)
        for j, (pos, cid) in enumerate(zip(positions, ids)):
            updates[pos] = ClientUpdate(cid, len(shards[cid]), stack.view(j),
                                        {"train_loss": float(losses[j]), "local_steps": float(steps[j])})
    last_timing.update(device_s=t1 - t0, output_s=time.perf_counter() - t1)
    return [updates[i] for i in range(len(client_ids))]
