"""The vectorized client engine: all sampled clients of a round train together.

``client_train_vectorized`` returns the same ``ClientUpdate``s as the per-client loop
(``Method.client_update``): same batch order, same SGD-with-momentum arithmetic, unequal client
sizes handled by padding and masks, so FedAvg after a round agrees with the loop to float
rounding. Per-client parameters and momentum are stacked along a client dimension and one
``vmap``-ed gradient step advances a whole chunk of ``train.vector_chunk`` clients.

``trainer_for`` picks the trainer that reproduces a method's local training:
- the plain trainer (``trainer.py``: cross-entropy + ``penalty`` under SGD, with CUDA graphs and
  ``torch.compile``) for methods that keep ``Method``'s local-training hooks (FedAvg, FedProx,
  zero-fill);
- the method trainer (``method_trainer.py``) for methods declared ``vectorizable`` with hooks of
  their own (``batch_loss``, ``local_data``, ``start_weights``, ``finish_update``, ...: PmcmFL and
  the others, see docs/performance.md);
- a trainer of its own from ``SPECIAL_TRAINERS`` (3FM's meta-step).
When none does, ``engine/steps.client_train`` trains the clients one by one (the loop), saying why
once in the log:
- the method's ``vectorizable`` is False (custom local losses or client logic that this engine
  does not reproduce; an ordinary class attribute, inherited by subclasses), or it overrides
  ``client_update``/``train_local``/``run_local``/``local_step``, or
- the model cannot be vmapped faithfully (dropout > 0, batch norm, layers without batching
  rules such as ``nn.GRU``; see ``probe``).
The method's ``penalty`` hook (FedProx's proximal term) is added to the loss here as in the loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.engine.resources import device_of, resources_for
from mmfl.engine.vectorized.batches import num_local_steps, plan_chunks
from mmfl.engine.vectorized.method_trainer import method_trainer_for, override_reason
from mmfl.engine.vectorized.stack import ClientStack
from mmfl.engine.vectorized.step import SGDSettings
from mmfl.engine.vectorized.trainer import VectorTrainer
from mmfl.methods import Method, resolve
from mmfl.methods.base import Context
from mmfl.state import ClientUpdate, RoundState

log = logging.getLogger(__name__)

_TRAINERS: OrderedDict[str, VectorTrainer | str] = OrderedDict()  # setting -> trainer, or why it falls back
_MAX_TRAINERS = 4
# Seconds spent by the last call: on the device (training) and turning results into ClientUpdates.
last_timing: dict[str, float] = {}
_WARNED: set[str | tuple[str, str]] = set()


# The local-training hooks this engine reproduces as ``Method`` defines them (plus ``penalty``).
REPRODUCED_HOOKS = ("client_update", "train_local", "run_local", "local_data", "local_epochs", "local_batch_size",
                    "batch_loss", "local_step", "make_optimizer", "start_weights", "training_shard", "finish_update",
                    "updated_params")


# Trainers of their own for methods whose local step the generic trainers do not reproduce (3FM's
# meta-step): method class "module:Class" -> "module:function"; the function takes
# (method, cfg, state, sample) and returns a trainer (with ``updates``, below) or the reason to use the loop.
SPECIAL_TRAINERS: dict[str, str] = {
    "mmfl.methods.threefm:ThreeFM": "mmfl.engine.vectorized.maml:trainer_for_3fm",
}


def _special(method: Method, cfg: ExperimentConfig, state: RoundState, sample: MultimodalDataset):
    import importlib

    target = SPECIAL_TRAINERS.get(f"{type(method).__module__}:{type(method).__qualname__}")
    if target is None:
        return None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(method, cfg, state, sample)


def method_reason(method: Method) -> str | None:
    """Why the plain trainer does not reproduce a method's local training, or None when it does."""
    return override_reason(method, REPRODUCED_HOOKS, "this engine")


def _setting_key(method: Method, cfg: ExperimentConfig, spec: DataSpec, cuda_graph: bool, static_buffers: bool) -> str:
    t = cfg.train
    return json.dumps([type(method).__module__, type(method).__qualname__, cfg.model.model_dump(), spec.to_json(),
                       cfg.method.params, t.lr, t.momentum, t.weight_decay, device_of(cfg), t.compile, cuda_graph,
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
    ctx = Context(cfg, spec, state.round + 1, -1, device_of(cfg), resources_for(cfg))
    t = cfg.train
    model = method.load_model(state.model_weights(), ctx)
    probe = {n: p.detach() for n, p in model.named_parameters()}
    penalty = None
    if method.penalty(probe, probe, ctx) is not None:  # declared and active for these params

        def penalty(params, anchor):
            return method.penalty(params, anchor, ctx)

    trainer = VectorTrainer(model, state.model_weights(), SGDSettings(t.lr, t.momentum, t.weight_decay),
                            torch.device(device_of(cfg)), penalty=penalty, compile=t.compile,
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


def trainer_for(method: Method, cfg: ExperimentConfig, state: RoundState, sample: MultimodalDataset,
                cuda_graph: bool = True, static_buffers: bool = False):
    """The trainer that reproduces ``method``'s local training in this setting, or None (use the loop).

    ``cuda_graph`` allows capturing each chunk's local steps as one CUDA graph when
    ``train.device`` is a GPU; ``static_buffers`` runs chunks through the graph's fixed buffers
    without capturing (a check of that path on any device). The reason for None is logged:
    loudly once per setting and process, then quietly every further round.
    """
    # Nothing to check the engine on (a client without samples): say so for this call only, without
    # caching a verdict for the setting. Callers pass a client that has samples where there is one.
    found = "the sample client holds no sample to check the engine on" if len(sample) == 0 else None
    spec = DataSpec.from_json(state.meta["data_spec"])
    if found is None and cfg.train.engine == "auto":  # known to differ beyond rounding: every trainer alike
        found = method.inexact_vectorized(Context(cfg, spec, state.round + 1))
    found = found or _special(method, cfg, state, sample)
    if found is None:
        if method_reason(method) is None:  # Method's own training hooks: the plain trainer
            found = _trainer(method, cfg, state, spec, sample, cuda_graph, static_buffers)
        else:  # hooks of its own: the method trainer
            found = method_trainer_for(method, cfg, state, sample)
    if not isinstance(found, str):
        if cfg.train.engine == "auto" and ("auto", method.name) not in _WARNED:
            _WARNED.add(("auto", method.name))
            log.info("train.engine auto: the vectorized engine trains the clients of %r together", method.name)
        return found
    reason = found
    if cfg.train.engine == "auto":
        # The loop is an expected choice of ``auto``: said once (INFO), then only at DEBUG.
        level = logging.DEBUG if ("auto", reason) in _WARNED else logging.INFO
        _WARNED.add(("auto", reason))
        log.log(level, "train.engine auto: training clients one by one (the loop): %s", reason)
        return None
    level = logging.INFO if reason in _WARNED else logging.WARNING
    _WARNED.add(reason)
    log.log(level, "vectorized engine: training clients one by one (the loop): %s", reason)
    return None


def client_train_vectorized(
    cfg: ExperimentConfig, state: RoundState, shards: Mapping[int, MultimodalDataset], client_ids: Sequence[int],
    method: Method | None = None, cuda_graph: bool = True, static_buffers: bool = False,
) -> list[ClientUpdate]:
    """Train ``client_ids`` together when this engine reproduces the method, else one by one (benchmarks, tests).

    ``method`` overrides the configured method (benchmarks pass their own model).
    """
    method = method or resolve(cfg).method
    client_ids = list(client_ids)
    if not client_ids:
        return []
    trainer = trainer_for(method, cfg, state, sample_shard(shards, client_ids), cuda_graph, static_buffers)
    if trainer is None:
        return loop_train(method, cfg, state, shards, client_ids)
    return train_clients(trainer, cfg, state, shards, client_ids)


def sample_shard(shards: Mapping[int, MultimodalDataset], client_ids: Sequence[int]) -> MultimodalDataset:
    """The shard ``trainer_for`` checks the engine on: the first of ``client_ids`` that holds samples."""
    return next((shards[c] for c in client_ids if len(shards[c])), shards[client_ids[0]])


def loop_train(method: Method, cfg: ExperimentConfig, state: RoundState,
               shards: Mapping[int, MultimodalDataset], client_ids: Sequence[int]) -> list[ClientUpdate]:
    """The clients one by one, as the loop engine trains them (the reference of every equality check)."""
    spec = DataSpec.from_json(state.meta["data_spec"])
    resources = resources_for(cfg)
    return [method.client_update(state, shards[c], Context(cfg, spec, state.round + 1, c, device_of(cfg), resources))
            for c in client_ids]


def train_clients(trainer: VectorTrainer, cfg: ExperimentConfig, state: RoundState,
                  shards: Mapping[int, MultimodalDataset], client_ids: Sequence[int]) -> list[ClientUpdate]:
    """Train ``client_ids`` from the global state of the round, ``train.vector_chunk`` clients at a time.

    Each chunk's trained weights stay stacked on the training device (a ``ClientStack``); every
    update's ``tensors`` is a read-only ``StackView`` (a ``StackedRow``) of its row, copied to the
    host only when read. FedAvg's mean and update screening read the stack directly.
    """
    client_ids = list(client_ids)
    if not client_ids:
        return []
    if hasattr(trainer, "updates"):  # a trainer that builds the updates itself (method trainers)
        return trainer.updates(cfg, state, shards, client_ids)
    spec = DataSpec.from_json(state.meta["data_spec"])
    global_weights = state.model_weights()
    trainer.set_global(global_weights)
    t, round_index = cfg.train, state.round + 1
    updates: dict[int, ClientUpdate] = {}
    t0 = time.perf_counter()
    # Clients of similar size share a chunk, so few steps are padding; results keep the given order.
    # Chunks are queued without waiting for the device: the host prepares the next chunk while the
    # device trains the previous one, and everything is read back once at the end.
    local_steps = [num_local_steps(len(shards[c]), t.batch_size, t.local_epochs) for c in client_ids]
    chunks = []
    for positions in plan_chunks(local_steps, t.vector_chunk):
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
