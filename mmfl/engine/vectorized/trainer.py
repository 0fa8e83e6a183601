"""Local training of a chunk of clients together, eager or compiled, optionally as one CUDA graph.

A ``VectorTrainer`` is built once per (model structure, optimiser settings, device) and reused
across rounds: it owns the static tensors the step closes over (fixed tensors and the global
anchor), so a compiled step or a captured CUDA graph stays valid when the next round only
copies new global weights into them.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from mmfl.data.dataset import MultimodalDataset
from mmfl.engine.vectorized.batches import ChunkBatches, chunk_schedule, gather_batches, shard_tensors
from mmfl.engine.vectorized.probe import probe_reason, static_reason, unused_parameters
from mmfl.engine.vectorized.step import Penalty, SGDSettings, Tensors, make_client_loss, make_step

log = logging.getLogger(__name__)

# Chunk shapes (clients, steps, batch width) kept captured at once. Sampled clients of varied
# sizes give new shapes; older graphs and their buffers are released beyond this many.
MAX_GRAPHS = 8


@dataclass
class ChunkResult:
    """Trained weights of a chunk, stacked with the client dimension first, and per-client metrics."""

    params: Tensors
    mean_loss: torch.Tensor  # (C,) float64
    steps: torch.Tensor  # (C,) long


class VectorTrainer:
    def __init__(self, model: nn.Module, global_weights: Tensors, sgd: SGDSettings, device: torch.device,
                 penalty: Penalty | None = None, compile: bool = False, cuda_graph: bool = True,
                 static_buffers: bool = False):
        self.model = model.to(device)
        self.model.train()
        self.sgd, self.device, self.penalty = sgd, device, penalty
        self.compile = compile
        self.cuda_graph = cuda_graph and device.type == "cuda"
        # Run chunks through the fixed buffers a CUDA graph replays from, without capturing:
        # the graph's bookkeeping, checkable on any device.
        self.static_buffers = static_buffers or self.cuda_graph
        # Each client's samples on the device, kept while the shard object lives: id -> (ref, tensors).
        self._resident: dict[int, tuple[weakref.ref, Tensors]] = {}
        self.param_names = [n for n, _ in model.named_parameters()]
        self.state_keys = list(model.state_dict().keys())
        # Static tensors the loss closes over; set_global() overwrites them in place each round.
        self.static: Tensors = {k: v.detach().to(device).clone() for k, v in global_weights.items()}
        self.trainable: list[str] = []
        self.anchor: Tensors = {n: self.static[n] for n in self.param_names}
        # Captured chunks by shape, least recently used first; each holds its own device buffers.
        self._graphs: OrderedDict[tuple, _GraphedChunk] = OrderedDict()
        self._steps: dict[bool, object] = {}

    # ---- setup -----------------------------------------------------------------------------
    def prepare(self, sample: MultimodalDataset) -> str | None:
        """Decide what trains and check that vmap reproduces autograd; a reason string means 'use the loop'."""
        reason = static_reason(self.model)
        if reason:
            return reason
        k = min(len(sample), 4)
        inputs = {n: v[:k].to(self.device) for n, v in sample.inputs.items()}
        present, labels = sample.present[:k].to(self.device), sample.labels[:k].to(self.device)
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(self.static[n])
        try:
            unused = unused_parameters(self.model, inputs, present, labels, self.penalty, self.anchor)
        except Exception as exc:  # noqa: BLE001 - a model that cannot run this batch cannot be vectorized either
            return f"forward/backward on a sample batch failed: {type(exc).__name__}: {exc}"
        self.trainable = [n for n, p in named.items() if p.requires_grad and n not in unused]
        fixed = {k: v for k, v in self.static.items() if k not in self.trainable}
        self.client_loss = make_client_loss(self.model, fixed, self.anchor, self.penalty)
        plain_loss = make_client_loss(self.model, fixed, self.anchor, None)
        trainable = {n: self.static[n] for n in self.trainable}
        self.transform = False
        reason = probe_reason(self.model, plain_loss, trainable, inputs, present, labels)
        if reason and reason.startswith("vmap over clients failed"):
            # No batching rule for a layer's forward (nn.GRU): torch.func.grad decomposes it.
            self.transform = True
            reason = probe_reason(self.model, plain_loss, trainable, inputs, present, labels, transform=True)
        if reason:
            return reason
        self._build_steps()
        return None

    def _build_steps(self) -> None:
        for masked in (False, True):
            step = make_step(self.client_loss, self.sgd, masked, self.transform, swap=not (self.static_buffers or self.compile))
            self._steps[masked] = torch.compile(step, dynamic=False) if self.compile else step

    def set_global(self, weights: Tensors) -> None:
        with torch.no_grad():
            for k, v in self.static.items():
                v.copy_(weights[k].to(self.device))

    # ---- training --------------------------------------------------------------------------
    def resident(self, shard: MultimodalDataset) -> Tensors:
        """The shard's tensors on the trainer's device, copied there once and reused every round."""
        if self.device.type == "cpu":
            return shard_tensors(shard)
        found = self._resident.get(id(shard))
        if found is not None and found[0]() is shard:
            return found[1]
        for key in [k for k, (ref, _) in self._resident.items() if ref() is None]:
            del self._resident[key]
        tensors = {k: v.to(self.device) for k, v in shard_tensors(shard).items()}
        try:
            self._resident[id(shard)] = (weakref.ref(shard), tensors)
        except TypeError:  # not weak-referenceable: copy every round instead of holding it forever
            pass
        return tensors

    def train_chunk(self, shards: list[MultimodalDataset], seeds: list[int], batch_size: int, epochs: int) -> ChunkResult:
        schedule = chunk_schedule([len(s) for s in shards], seeds, batch_size, epochs)
        all_active = schedule.active.all(dim=1).tolist()
        batches = gather_batches([self.resident(s) for s in shards], schedule, self.device)
        c = len(shards)
        if self.static_buffers:
            try:
                return self._replay(batches, all_active, c)
            except Exception as exc:  # noqa: BLE001 - capture is an optimisation; eager is always correct
                log.warning("vectorized: CUDA graph capture or replay failed (%s: %s); running eagerly",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                self.cuda_graph = self.static_buffers = False
                self._graphs.clear()
        try:
            return self._eager(batches, all_active, c)
        except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor: the eager step is exact
            if not self.compile:
                raise
            log.warning("vectorized: torch.compile failed (%s: %s); running eagerly", type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
            self.compile = False
            self._build_steps()
            return self._eager(batches, all_active, c)

    def _replay(self, batches: ChunkBatches, all_active: list[bool], c: int) -> ChunkResult:
        key = (c, batches.num_steps, tuple(batches.labels.shape), tuple(all_active))
        graphed = self._graphs.get(key)
        if graphed is None:
            graphed = self._graphs[key] = _GraphedChunk(self, batches, all_active, capture=self.cuda_graph)
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        return graphed.replay(batches)

    def initial_state(self, c: int) -> tuple[Tensors, Tensors, torch.Tensor]:
        params = {n: self.static[n].unsqueeze(0).repeat(c, *([1] * self.static[n].dim())) for n in self.trainable}
        bufs = {n: torch.zeros_like(p) for n, p in params.items()}
        return params, bufs, torch.zeros(c, dtype=torch.float64, device=self.device)

    def run_steps(self, params: Tensors, bufs: Tensors, total: torch.Tensor, batches: ChunkBatches,
                  all_active: list[bool]) -> None:
        """All local steps of a chunk; ``params``, ``bufs`` and ``total`` are updated in place."""
        for s in range(batches.num_steps):
            active = batches.active[s]
            losses = self._steps[not all_active[s]](
                params, bufs, {n: x[s] for n, x in batches.inputs.items()}, batches.present[s],
                batches.labels[s], batches.weight[s], active,
            )
            total += torch.where(active, losses.to(torch.float64), torch.zeros_like(total))

    def _eager(self, batches: ChunkBatches, all_active: list[bool], c: int) -> ChunkResult:
        params, bufs, total = self.initial_state(c)
        with torch.no_grad():  # torch.func computes the gradients; nothing outside needs autograd
            self.run_steps(params, bufs, total, batches, all_active)
        return ChunkResult(params, total / batches.steps.clamp_min(1), batches.steps)


class _GraphedChunk:
    """All local steps of one chunk shape captured once as a CUDA graph and replayed every round.

    The graph reads only static tensors: the trainer's global copies, this object's parameter,
    momentum, loss and batch buffers. A replay copies the round's batches in, resets the
    parameters to the global model and runs every step with one launch. With ``capture=False``
    the same buffers are used but the steps run eagerly at each replay (on any device), which
    checks this bookkeeping where no GPU is available.
    """

    def __init__(self, trainer: VectorTrainer, batches: ChunkBatches, all_active: list[bool], capture: bool = True):
        self.trainer, self.all_active = trainer, all_active
        c = int(batches.labels.shape[1])
        self.batches = ChunkBatches({k: v.clone() for k, v in batches.inputs.items()}, batches.present.clone(),
                                    batches.labels.clone(), batches.weight.clone(), batches.active.clone(),
                                    batches.steps.clone())
        self.params, self.bufs, self.total = trainer.initial_state(c)
        self.graph = None
        if not capture:
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():  # warm-up (allocator, cuBLAS handles, compile)
            self._reset()
            trainer.run_steps(self.params, self.bufs, self.total, self.batches, all_active)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        self._reset()
        with torch.cuda.graph(self.graph), torch.no_grad():
            trainer.run_steps(self.params, self.bufs, self.total, self.batches, all_active)

    def _reset(self) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.trainer.static[n].unsqueeze(0).expand_as(p))
                self.bufs[n].zero_()
            self.total.zero_()

    def replay(self, batches: ChunkBatches) -> ChunkResult:
        with torch.no_grad():
            for k, v in batches.inputs.items():
                self.batches.inputs[k].copy_(v)
            for name in ("present", "labels", "weight", "active", "steps"):
                getattr(self.batches, name).copy_(getattr(batches, name))
        self._reset()
        if self.graph is not None:
            self.graph.replay()
        else:
            with torch.no_grad():
                self.trainer.run_steps(self.params, self.bufs, self.total, self.batches, self.all_active)
        steps = self.batches.steps
        # Copies: the next chunk of the same shape replays into the same buffers.
        return ChunkResult({n: p.clone() for n, p in self.params.items()},
                           self.total / steps.clamp_min(1), steps.clone())
