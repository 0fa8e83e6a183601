"""3FM's clients trained together: MAML meta-steps over stacked clients with ``torch.func``.

3FM (``mmfl/methods/threefm.py``) overrides ``local_step``: every step splits its batch into a
support and a query set, adapts the weights on the support loss (``inner_steps`` plain gradient
or differentiable Adam steps) and hands the query loss's meta-gradient to the client's outer
Adam. This trainer reproduces that loop for a chunk of clients at once:

- **Batch order**: each client's batches are the loop's (``iterate_batches`` from the client's
  seeded generator, one ``randperm`` per epoch, the method's per-client ``local_batch_size``:
  ``batching: full`` makes every shard one batch, so clients of a chunk have batches of
  different widths). A batch with fewer than 2 samples is skipped and not counted, as in the loop.
- **Support and query** are chosen on the host by the method's own rule (``support_query``:
  presence split, or the positional split and its fallback, counted in ``fallback_splits``),
  so the row selection and its order are the loop's. Each is gathered into its own padded grid
  of shape (steps, clients, width) with a 0/1 weight; the losses are masked means over real rows
  (no boolean indexing under ``vmap``), and a padded row costs compute but changes nothing.
- **Meta-gradient**: ``vmap`` over clients of ``mmfl.methods.maml.meta_gradient`` (the function
  the loop calls; second order unless ``first_order``; inner ``sgd`` or ``adam``).
- **Outer step**: ``VectorOptimizer`` reproduces the method's ``make_optimizer`` (Adam at
  ``outer_lr``) on the stacked parameters; a client whose step is padding or skipped keeps its
  parameters and Adam state, and its Adam step count does not advance.

3FM's loss draws no random numbers (the model is checked for dropout), so the loop's per-client
``torch.manual_seed`` has nothing to reproduce. Updates equal the loop's to float rounding
(``tests/test_threefm_vectorized.py``: 1e-6 after a round). ``train.engine: auto`` keeps the loop
for the second-order inner Adam, whose meta-gradient magnifies rounding (``ThreeFM.inexact_vectorized``,
asked by ``trainer_for`` before any trainer).
"""

from __future__ import annotations

import json
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap
from torch.nn import functional as F

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.engine.resources import device_of, resources_for
from mmfl.engine.vectorized.batches import ChunkBatches, ChunkSchedule, gather_batches, plan_chunks, shard_tensors
from mmfl.engine.vectorized.optim import VectorOptimizer, settings_of, unsupported
from mmfl.engine.vectorized.probe import perturbed_pair, static_reason
from mmfl.engine.vectorized.stack import ClientStack
from mmfl.methods import maml
from mmfl.methods.base import Context, Method, iterate_batches, masked_mean
from mmfl.methods.threefm import ThreeFM, ThreeFMParams, meta_gradient, support_query, zero_branch_forward
from mmfl.state import ClientUpdate, RoundState

Tensors = dict[str, torch.Tensor]

# The hooks of a client's update this trainer takes as ``Method`` (or ``ThreeFM``) defines them.
_HOOKS = ("client_update", "run_local", "train_local", "start_weights", "training_shard", "local_data",
          "finish_update", "local_step", "local_epochs", "local_batch_size", "make_optimizer", "penalty",
          "updated_params")

_TRAINERS: OrderedDict[str, "ThreeFMTrainer | str"] = OrderedDict()  # setting -> trainer, or why the loop
_MAX_TRAINERS = 4


@dataclass
class MetaSchedule:
    """A chunk's meta-steps: support and query rows per (step, client), padded; which steps are real."""

    support: ChunkSchedule
    query: ChunkSchedule
    active: torch.Tensor  # (S, C) bool: a real, counted meta-step
    fallback: torch.Tensor  # (S, C) float: the step fell back to the positional split
    steps: torch.Tensor  # (C,) counted meta-steps per client


def meta_schedule(shards: Sequence[MultimodalDataset], seeds: Sequence[int], batch_sizes: Sequence[int],
                  epochs: Sequence[int], params: ThreeFMParams) -> MetaSchedule:
    """The loop's batches of every client, each split into support and query rows (indices into its shard)."""
    per_client: list[list[tuple[torch.Tensor, torch.Tensor, bool] | None]] = []
    for shard, seed, bs, ep in zip(shards, seeds, batch_sizes, epochs):
        gen = torch.Generator().manual_seed(seed)
        steps: list[tuple[torch.Tensor, torch.Tensor, bool] | None] = []
        for _ in range(ep):
            for idx in iterate_batches(len(shard), bs, gen):
                if len(idx) < 2:  # the loop's local_step skips it (not counted)
                    steps.append(None)
                    continue
                sup, qry, fell_back = support_query(shard.present[idx], params)
                steps.append((idx[sup], idx[qry], fell_back))
        per_client.append(steps)
    c = len(shards)
    num_steps = max(len(s) for s in per_client)
    real = [x for s in per_client for x in s if x is not None]
    ws = max([len(x[0]) for x in real], default=1)
    wq = max([len(x[1]) for x in real], default=1)
    grids = {k: (torch.zeros(num_steps, c, w, dtype=torch.long), torch.zeros(num_steps, c, w))
             for k, w in (("s", ws), ("q", wq))}
    active = torch.zeros(num_steps, c, dtype=torch.bool)
    fallback = torch.zeros(num_steps, c)
    for j, steps in enumerate(per_client):
        for s, x in enumerate(steps):
            if x is None:
                continue
            for key, rows in (("s", x[0]), ("q", x[1])):
                index, weight = grids[key]
                index[s, j, : len(rows)] = rows
                weight[s, j, : len(rows)] = 1.0
            active[s, j] = True
            fallback[s, j] = float(x[2])
    counted = active.sum(0)
    return MetaSchedule(ChunkSchedule(*grids["s"], active, counted), ChunkSchedule(*grids["q"], active, counted),
                        active, fallback, counted)


def make_client_meta(model: nn.Module, p: ThreeFMParams):
    """``meta(params, support..., query...) -> (meta-gradient, query loss)`` of ONE client, for ``vmap``."""

    def masked_loss(params: Tensors, inputs: Tensors, present: torch.Tensor, labels: torch.Tensor,
                    weight: torch.Tensor) -> torch.Tensor:
        logits = zero_branch_forward(model, params, inputs, present)
        return masked_mean(F.cross_entropy(logits, labels, reduction="none"), weight)

    def client_meta(params: Tensors, s_in: Tensors, s_present: torch.Tensor, s_labels: torch.Tensor,
                    s_weight: torch.Tensor, q_in: Tensors, q_present: torch.Tensor, q_labels: torch.Tensor,
                    q_weight: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        return maml.meta_gradient(lambda q: masked_loss(q, s_in, s_present, s_labels, s_weight),
                                  lambda q: masked_loss(q, q_in, q_present, q_labels, q_weight),
                                  params, p.inner_lr, p.inner_steps, p.inner_optimizer, p.first_order)

    return client_meta


def _probe(model: nn.Module, client_meta, params: Tensors, sample: MultimodalDataset, p: ThreeFMParams,
           tol: float = 1e-4) -> str | None:
    """None if the batched meta-gradient of two perturbed clients equals the loop's, else why not."""
    k = min(len(sample), 4)
    if k < 2:
        return None  # nothing to check on; such a client is skipped by the loop as well
    device = next(iter(params.values())).device
    inputs = {n: v[:k].to(device) for n, v in sample.inputs.items()}
    present, labels = sample.present[:k].to(device), sample.labels[:k].to(device)
    half = k // 2
    sup = ({n: v[:half] for n, v in inputs.items()}, present[:half], labels[:half])
    qry = ({n: v[half:] for n, v in inputs.items()}, present[half:], labels[half:])
    clients, stacked = perturbed_pair(params)
    rep = lambda t: torch.stack([t, t])  # noqa: E731 - the same batch for both clients

    def batched(part):
        return ({n: rep(v) for n, v in part[0].items()}, rep(part[1]), rep(part[2]),
                rep(torch.ones(part[2].shape[0], device=device)))

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grads, _ = vmap(client_meta)(stacked, *batched(sup), *batched(qry))
    except Exception as exc:  # noqa: BLE001 - any failure of the transform means "use the loop"
        return f"vmap of the 3FM meta-step failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for w in caught:
        if "batching rule" in str(w.message).lower():
            return f"vmap of the 3FM meta-step has no batching rule: {str(w.message).splitlines()[0][:200]}"
    for j, client in enumerate(clients):
        expected, _ = meta_gradient(model, client, sup, qry, p)
        for n in params:
            if not torch.allclose(grads[n][j], expected[n], rtol=tol, atol=tol):
                err = float((grads[n][j] - expected[n]).abs().max())
                return f"vmap meta-gradient of {n} differs from the loop's by {err:.3g}"
    return None


class ThreeFMTrainer:
    """Prepared once per setting (model structure, method params, device) and reused across rounds."""

    def __init__(self, method: ThreeFM, model: nn.Module, p: ThreeFMParams, device: torch.device):
        self.method, self.model, self.p, self.device = method, model.to(device), p, device
        self.model.train()
        self.client_meta = make_client_meta(self.model, p)
        self.batched_meta = vmap(self.client_meta)
        self.param_names = [n for n, _ in model.named_parameters()]
        self.state_keys = list(model.state_dict().keys())

    # ---- training --------------------------------------------------------------------------
    def train_chunk(self, global_weights: Mapping[str, torch.Tensor], shards: Sequence[MultimodalDataset],
                    contexts: Sequence[Context]) -> tuple[Tensors, MetaSchedule, torch.Tensor, torch.Tensor]:
        """Stacked trained parameters of a chunk, its schedule, summed query losses and fallbacks."""
        m = self.method
        schedule = meta_schedule(shards, [ctx.seed() for ctx in contexts],
                                 [m.local_batch_size(ctx, len(s)) for ctx, s in zip(contexts, shards)],
                                 [m.local_epochs(ctx) for ctx in contexts], self.p)
        data = [{k: v.to(self.device) for k, v in shard_tensors(s).items()} for s in shards]
        sup = gather_batches(data, schedule.support, self.device)
        qry = gather_batches(data, schedule.query, self.device)
        c = len(shards)
        params = {n: global_weights[n].to(self.device).unsqueeze(0).repeat(c, *([1] * global_weights[n].dim()))
                  for n in self.param_names}
        opt = VectorOptimizer(settings_of(m.make_optimizer(self.model, contexts[0])), params)
        active = schedule.active.to(self.device)
        fallback = schedule.fallback.to(self.device, torch.float64)
        total = torch.zeros(c, dtype=torch.float64, device=self.device)
        fallbacks = torch.zeros(c, dtype=torch.float64, device=self.device)
        with torch.no_grad():  # torch.func computes the gradients; nothing outside needs autograd
            any_active, all_active = schedule.active.any(dim=1).tolist(), schedule.active.all(dim=1).tolist()
            for s in range(schedule.active.shape[0]):
                if not any_active[s]:
                    continue
                grads, losses = self.batched_meta(params, *_at(sup, s), *_at(qry, s))
                opt.step(params, grads, active[s], all_active=all_active[s])
                total += torch.where(active[s], losses.to(torch.float64), torch.zeros_like(total))
                fallbacks += torch.where(active[s], fallback[s], torch.zeros_like(fallbacks))
        return params, schedule, total, fallbacks

    def updates(self, cfg: ExperimentConfig, state: RoundState, shards: Mapping[int, MultimodalDataset],
                client_ids: Sequence[int]) -> list[ClientUpdate]:
        """Every client's ``ClientUpdate`` (order of ``client_ids``), as ``ThreeFM``'s loop returns it."""
        client_ids = list(client_ids)
        if not client_ids:
            return []
        spec = DataSpec.from_json(state.meta["data_spec"])
        resources = resources_for(cfg)
        global_weights = state.model_weights()
        chunk, round_index = cfg.train.vector_chunk, state.round + 1
        t0 = time.perf_counter()
        contexts_of = {cid: Context(cfg, spec, round_index, cid, device_of(cfg), resources) for cid in client_ids}
        # A client's work is about its samples x local epochs (rows x meta-steps); chunks of similar
        # clients keep padding under 25% (as for the other trainers).
        work = [len(shards[cid]) * self.method.local_epochs(contexts_of[cid]) for cid in client_ids]
        rows_of: list[int] = []  # position in client_ids of each trained row, chunk after chunk
        trained: list[Tensors] = []
        metrics: dict[int, dict[str, float]] = {}
        for positions in plan_chunks(work, chunk):
            ids = [client_ids[i] for i in positions]
            contexts = [contexts_of[cid] for cid in ids]
            params, schedule, total, fallbacks = self.train_chunk(global_weights, [shards[c] for c in ids], contexts)
            trained.append(params)
            rows_of.extend(positions)
            losses, falls, steps = total.cpu().tolist(), fallbacks.cpu().tolist(), schedule.steps.tolist()
            for j, pos in enumerate(positions):
                m = {"train_loss": losses[j] / max(steps[j], 1)}
                if steps[j]:  # the loop records a step's extra metrics only once a step ran
                    m["fallback_splits"] = falls[j]
                m["local_steps"] = float(steps[j])
                metrics[pos] = m
        # One stack for the round, rows in the order of client_ids: the server's mean, which adds
        # rows in the given order, reduces it in one pass instead of one run per chunk.
        back = torch.tensor(sorted(range(len(rows_of)), key=rows_of.__getitem__), device=self.device)
        stacked = {f"model/{k}": torch.cat([t[k] for t in trained]).index_select(0, back).detach()
                   for k in self.param_names}
        shared = {f"model/{k}": global_weights[k] for k in self.state_keys if k not in self.param_names}
        stack = ClientStack(stacked, shared, [f"model/{k}" for k in self.state_keys])
        out = [ClientUpdate(cid, len(shards[cid]), stack.view(i), metrics[i]) for i, cid in enumerate(client_ids)]
        from mmfl.engine import vectorized

        vectorized.last_timing.update(device_s=time.perf_counter() - t0, output_s=0.0)
        return out


def _at(batches: ChunkBatches, s: int) -> tuple:
    return ({n: x[s] for n, x in batches.inputs.items()}, batches.present[s], batches.labels[s], batches.weight[s])


def _key(cfg: ExperimentConfig, state: RoundState, p: ThreeFMParams) -> str:
    return json.dumps([cfg.model.model_dump(), state.meta["data_spec"], p.model_dump(), device_of(cfg)],
                      sort_keys=True, default=str)


def trainer_for_3fm(method: Method, cfg: ExperimentConfig, state: RoundState,
                    sample: MultimodalDataset) -> ThreeFMTrainer | str:
    """The prepared trainer for 3FM in this setting, or the reason to train its clients one by one."""
    changed = [h for h in _HOOKS if getattr(type(method), h) is not getattr(ThreeFM, h)]
    if not isinstance(method, ThreeFM) or changed:
        return f"method {method.name!r} changes 3FM's hooks {', '.join(changed)}, which this engine does not reproduce"
    ctx = Context(cfg, DataSpec.from_json(state.meta["data_spec"]), state.round + 1)
    p: ThreeFMParams = ctx.params
    key = _key(cfg, state, p)
    found = _TRAINERS.get(key)
    if found is None:
        found = _TRAINERS[key] = _prepare(method, cfg, state, sample, p)
        while len(_TRAINERS) > _MAX_TRAINERS:
            _TRAINERS.popitem(last=False)
    _TRAINERS.move_to_end(key)
    return found


def _prepare(method: ThreeFM, cfg: ExperimentConfig, state: RoundState, sample: MultimodalDataset,
             p: ThreeFMParams) -> ThreeFMTrainer | str:
    spec = DataSpec.from_json(state.meta["data_spec"])
    ctx = Context(cfg, spec, state.round + 1, -1, device_of(cfg), resources_for(cfg))
    model = method.load_model(state.model_weights(), ctx)
    reason = static_reason(model)
    if reason:
        return reason
    opt = method.make_optimizer(model, ctx)
    reason = unsupported(opt)
    if reason:
        return f"3FM's outer optimiser: {reason}"
    if len(list(model.parameters())) != len(opt.param_groups[0]["params"]):
        return "3FM's outer optimiser does not hold every model parameter"
    trainer = ThreeFMTrainer(method, model, p, torch.device(device_of(cfg)))
    probe = {n: t.detach() for n, t in trainer.model.named_parameters()}
    return _probe(trainer.model, trainer.client_meta, probe, sample, p) or trainer
