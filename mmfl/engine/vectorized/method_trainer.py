"""Clients of any method declared ``vectorizable`` trained together, from the method's own hooks.

The plain trainer (``trainer.py``) covers cross-entropy with an optional penalty under SGD and is
tuned for speed (CUDA graphs, ``torch.compile``). Methods with a loss of their own (PmcmFL's
prototype masks and contrast, FlexMod's step plans, the prompt and transfer losses of FED-PRIME
and FedMVP) train here instead, from the hooks ``Method`` declares:

- per client: ``start_weights`` (personal parts), ``training_shard``, ``local_data`` (with the
  model loaded from the global weights), ``local_batch_size`` and ``local_epochs``;
- the loop's batch order (``batches.chunk_schedule``), padded to a common grid: ``batch.weight``
  marks real samples and ``batch.step_data`` holds each client's row of ``LocalData.per_step``;
- one ``vmap`` of the method's ``batch_loss`` (+ ``penalty``) over the
  stacked clients per step and one backward pass (``step.batched_grad``), the model re-parametrised with each client's weights
  (``torch.func.functional_call``); ``updated_params`` and padding steps leave parameters and
  optimiser state untouched, as in the loop;
- the optimiser ``make_optimizer`` builds, reproduced on stacked parameters (``optim.py``);
- ``finish_update`` per client, with its trained weights as a row view of the stack and, in
  ``LocalData.aux["train_time_s"]``, its share of the chunk's wall time (FlexMod reports it).

Scalar metrics of ``batch_loss`` are averaged over a client's real steps (summed for the
method's ``summed_metrics``); non-scalar ones are summed into ``LocalData.totals``.
Training is eager (no compile, no CUDA graphs). Before the first use in a process the trainer
checks, on a sample batch, that the batched gradient equals ordinary autograd, and otherwise
gives the reason to train clients one by one.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.engine.resources import device_of, resources_for
from mmfl.engine.vectorized.batches import chunk_schedule, gather_rows, num_local_steps, plan_chunks
from mmfl.engine.vectorized.optim import VectorOptimizer, settings_of, unsupported
from mmfl.engine.vectorized.probe import perturbed_pair, static_reason
from mmfl.engine.vectorized.stack import ClientStack
from mmfl.engine.vectorized.step import batched_grad
from mmfl.methods import Method
from mmfl.methods.base import Batch, Context, LocalData
from mmfl.state import ClientUpdate, RoundState

Tensors = dict[str, torch.Tensor]

# Local-training hooks this trainer cannot reproduce: a method overriding one trains in the loop.
LOOP_ONLY_HOOKS = ("client_update", "train_local", "run_local", "local_step")
_UPDATED = "__updated__/"


def override_reason(method: Method, hooks: tuple[str, ...], trainer: str) -> str | None:
    """Why ``trainer`` does not reproduce the method: not vectorizable, or it overrides one of ``hooks``."""
    if not method.vectorizable:
        return f"method {method.name!r} has vectorizable = False (custom local training)"
    changed = [h for h in hooks if getattr(type(method), h) is not getattr(Method, h)]
    if changed:
        return f"method {method.name!r} overrides {', '.join(changed)}, which {trainer} does not reproduce"
    return None


def method_reason(method: Method) -> str | None:
    """Why this trainer does not reproduce the method's local training, or None when it does."""
    return override_reason(method, LOOP_ONLY_HOOKS, "the vectorized engine")


class _Loss(nn.Module):
    """The method's batch loss as a module, so ``functional_call`` re-parametrises the whole call."""

    def __init__(self, method: Method, model: nn.Module, state: RoundState, ctx: Context):
        super().__init__()
        self.model, self.method, self.state, self.ctx = model, method, state, ctx
        self.step = 0

    def forward(self, inputs: Tensors, present: torch.Tensor, labels: torch.Tensor, extra: Tensors,
                step_data: Tensors, weight: torch.Tensor | None, anchor: Tensors | None):
        batch = Batch(inputs, present, labels, extra, None, 0, self.step, {}, weight, step_data)
        out = self.method.batch_loss(self.model, batch, self.state, self.ctx)
        loss, metrics = (out, {}) if isinstance(out, torch.Tensor) else out
        if anchor is not None:
            pen = self.method.penalty(dict(self.model.named_parameters()), anchor, self.ctx)
            if pen is not None:
                loss = loss + pen
        aux = {k: torch.as_tensor(v, dtype=torch.float64) if not isinstance(v, torch.Tensor) else v.detach()
               for k, v in metrics.items()}
        updated = self.method.updated_params(self.model, batch, self.ctx) or {}
        aux.update({_UPDATED + k: torch.as_tensor(v, dtype=torch.bool) for k, v in updated.items()})
        return loss, aux


def _rows(data: LocalData | Batch) -> Tensors:
    """The per-sample tensors of a client's data or batch under one flat namespace (what chunks gather)."""
    rows = {f"input/{k}": v for k, v in data.inputs.items()}
    rows.update({f"extra/{k}": v for k, v in data.extra.items()})
    rows["present"], rows["labels"] = data.present, data.labels
    return rows


def _split(rows: Mapping[str, torch.Tensor], prefix: str) -> Tensors:
    return {k[len(prefix):]: v for k, v in rows.items() if k.startswith(prefix)}


class MethodTrainer:
    """Trains chunks of clients of one method in one round setting (rebuilt every round: cheap)."""

    def __init__(self, method: Method, cfg: ExperimentConfig, state: RoundState):
        self.method, self.cfg, self.state = method, cfg, state
        self.spec = DataSpec.from_json(state.meta["data_spec"])
        self.device = torch.device(device_of(cfg))
        self.resources = resources_for(cfg)
        self.round = state.round + 1
        self.ctx = self.context(-1)
        self.global_weights = state.model_weights()
        self.model = method.load_model(self.global_weights, self.ctx)
        self.model.train()
        self.state_keys = list(self.model.state_dict().keys())
        self.trainable: list[str] = []
        self.settings = None
        self.transform = False  # torch.func.grad instead of one backward pass (see ``step.batched_grad``)

    def context(self, client_id: int) -> Context:
        return Context(self.cfg, self.spec, self.round, client_id, str(self.device), self.resources)

    # ---- set-up and the check against autograd ---------------------------------------------------
    def prepare(self, sample: MultimodalDataset, check: bool = True) -> str | None:
        """Decide what trains and (``check``) compare the batched gradient with autograd on a sample
        batch; a string: the reason to use the loop."""
        reason = static_reason(self.model)
        if reason:
            return reason
        opt = self.method.make_optimizer(self.model, self.ctx)
        reason = unsupported(opt)
        if reason:
            return f"the vectorized engine does not reproduce {reason}"
        self.settings = settings_of(opt)
        in_opt = {id(p) for p in opt.param_groups[0]["params"]}
        named = dict(self.model.named_parameters())
        probe_ctx = self.context(0)  # per-client hooks need a client (FlexMod seeds its validation split by it)
        data = self.method.local_data(self.model, self.method.training_shard(sample, probe_ctx), self.state, probe_ctx)
        k = min(len(data), 4)
        if k == 0:
            return "the sample shard is empty"
        batch = data.take(torch.arange(k), self.device)
        try:
            ref = copy.deepcopy(self.model)
            loss = self._loop_loss(ref, batch)
            loss.backward()
        except Exception as exc:  # noqa: BLE001 - a loss that cannot run on a sample cannot be vectorized
            return f"the method's loss failed on a sample batch: {type(exc).__name__}: {exc}"
        # Trainable: what gets a gradient on the probe batch, plus what ``updated_params`` flags per
        # step (FlexMod: an encoder the probe's step leaves out trains in later steps).
        flagged = self.method.updated_params(ref, batch, self.ctx) or {}
        self.trainable = [n for n, p in ref.named_parameters()
                          if id(named[n]) in in_opt and p.requires_grad and (p.grad is not None or n in flagged)]
        if not self.trainable:
            return "no parameter of the model gets a gradient"
        if not check:
            return None
        # The batched gradient of two slightly different clients must equal autograd on each.
        clients, stacked = perturbed_pair({n: named[n].detach() for n in self.trainable})
        two = lambda t: torch.stack([t, t])  # noqa: E731
        rows = {**_rows(batch), "weight": torch.ones(k, device=self.device)}
        step_data = {n: two(v) for n, v in batch.step_data.items()}
        grads = None
        for transform in (False, True):  # no batching rule for a layer (nn.GRU): torch.func.grad decomposes it
            self.transform = transform
            try:
                grads, _, _ = self._grad_fn()(0, stacked, {n: two(v) for n, v in rows.items()}, step_data)
                break
            except Exception as exc:  # noqa: BLE001 - any failure of the transform means "use the loop"
                failure = f"vmap over clients failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if grads is None:
            return failure
        for j, client in enumerate(clients):
            ref = copy.deepcopy(self.model)
            with torch.no_grad():
                for n, p in ref.named_parameters():
                    if n in client:
                        p.copy_(client[n])
            self._loop_loss(ref, batch).backward()
            for n, p in ref.named_parameters():
                if n not in client:
                    continue
                expected = p.grad if p.grad is not None else torch.zeros_like(p)
                if not torch.allclose(grads[n][j], expected, rtol=1e-4, atol=1e-5):
                    err = float((grads[n][j] - expected).abs().max())
                    return f"vmap gradient of {n} differs from autograd by {err:.3g}"
        # A padded slot (weight 0) must change nothing: the loss has to honour ``batch.weight``.
        pad = {n: torch.cat([v, v[-1:].flip(0) if v.dim() else v]) for n, v in rows.items() if n != "weight"}
        pad["labels"] = torch.cat([rows["labels"], (rows["labels"][-1:] + 1) % self.spec.num_classes])
        pad["weight"] = torch.cat([rows["weight"], torch.zeros(1, device=self.device)])
        padded, _, _ = self._grad_fn()(0, stacked, {n: two(v) for n, v in pad.items()}, step_data)
        for n in self.trainable:
            if not torch.allclose(padded[n], grads[n], rtol=1e-4, atol=1e-5):
                return (f"method {self.method.name!r}: batch_loss does not leave padded samples out "
                        "(batch.weight), so clients cannot share padded batches")
        return None

    def _loop_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out = self.method.batch_loss(model, batch, self.state, self.ctx)
        loss = out if isinstance(out, torch.Tensor) else out[0]
        anchor = {k: v.to(self.device) for k, v in self.global_weights.items()}
        pen = self.method.penalty(dict(model.named_parameters()), anchor, self.ctx)
        return loss if pen is None else loss + pen

    def _grad_fn(self, fixed: Tensors | None = None):
        """``(step, stacked params, stacked batch rows, stacked step data[, stacked personal]) -> (grads, losses, aux)``.

        ``fixed``: the tensors that do not train (default: those of the global model), the same for
        every client; ``personal``: tensors that do not train either but differ between the clients
        (``start_weights``), stacked."""
        loss_module = _Loss(self.method, self.model, self.state, self.ctx)
        if fixed is None:
            fixed = {k: v.to(self.device) for k, v in self.global_weights.items() if k not in self.trainable}
        fixed = {f"model.{k}": v for k, v in fixed.items()}
        anchor = {k: v.to(self.device) for k, v in self.global_weights.items()}
        anchor = {n: anchor[n] for n, _ in self.model.named_parameters()}

        def one(params: Tensors, rows: Tensors, step_data: Tensors, personal: Tensors):
            tensors = {**fixed, **{f"model.{k}": v for k, v in {**personal, **params}.items()}}
            return functional_call(loss_module, tensors, (_split(rows, "input/"), rows["present"], rows["labels"],
                                                          _split(rows, "extra/"), step_data, rows["weight"], anchor))

        def run(step: int, params: Tensors, rows: Tensors, step_data: Tensors, personal: Tensors | None = None):
            loss_module.step = step
            grads, (losses, aux) = batched_grad(one, params, rows, step_data, personal or {}, has_aux=True,
                                                transform=self.transform)
            return grads, losses, aux

        return run

    # ---- training ----------------------------------------------------------------------------------
    def updates(self, cfg: ExperimentConfig, state: RoundState, shards: Mapping[int, MultimodalDataset],
                client_ids: Sequence[int]) -> list[ClientUpdate]:
        client_ids = list(client_ids)
        ctxs = {cid: self.context(cid) for cid in client_ids}
        data = {cid: self.method.local_data(self.model, self.method.training_shard(shards[cid], ctxs[cid]),
                                            state, ctxs[cid]) for cid in client_ids}
        budget = {c: (self.method.local_batch_size(ctxs[c], len(data[c])), self.method.local_epochs(ctxs[c]))
                  for c in client_ids}
        local_steps = [num_local_steps(len(data[c]), *budget[c]) for c in client_ids]
        out: dict[int, ClientUpdate] = {}
        t0 = time.perf_counter()
        for positions in plan_chunks(local_steps, cfg.train.vector_chunk):
            ids = [client_ids[i] for i in positions]
            for pos, update in zip(positions, self._chunk(ids, shards, data, ctxs, budget)):
                out[pos] = update
        from mmfl.engine import vectorized

        vectorized.last_timing.update(device_s=time.perf_counter() - t0, output_s=0.0)
        return [out[i] for i in range(len(client_ids))]

    def _chunk(self, ids: list[int], shards: Mapping[int, MultimodalDataset], data: Mapping[int, LocalData],
               ctxs: Mapping[int, Context], budget: Mapping[int, tuple[int, int]]) -> list[ClientUpdate]:
        """Train the clients ``ids`` together; ``budget[c]``: client c's (batch size, local epochs)."""
        method, dev = self.method, self.device
        started = time.perf_counter()
        schedule = chunk_schedule([len(data[c]) for c in ids], [ctxs[c].seed() for c in ids],
                                  [budget[c][0] for c in ids], [budget[c][1] for c in ids])
        rows = gather_rows([{k: v.to(dev) for k, v in _rows(data[c]).items()} for c in ids], schedule, dev)
        rows["weight"] = schedule.weight.to(dev)
        active, steps = schedule.active.to(dev), schedule.steps
        all_active = schedule.active.all(dim=1).tolist()  # per step, on the host: no device sync per step
        num_steps = int(schedule.index.shape[0])
        step_rows = {}
        for key in data[ids[0]].per_step:
            per = [data[c].per_step[key] for c in ids]
            idx = torch.arange(num_steps)
            # (S, C, ...); a client's padded steps repeat its last row (zeros for a client without steps)
            step_rows[key] = torch.stack([p[idx.clamp_max(p.shape[0] - 1)] if p.shape[0] else
                                          p.new_zeros(num_steps, *p.shape[1:]) for p in per], dim=1).to(dev)
        starts = [method.start_weights(self.state, ctxs[c]) for c in ids]
        # Tensors that do not train are shared by the chunk, unless ``start_weights`` gives clients
        # their own: those are stacked and stay each client's (as in the loop).
        own = [k for k in starts[0] if k not in self.trainable
               and any(s[k] is not starts[0][k] and not torch.equal(s[k], starts[0][k]) for s in starts[1:])]
        personal = {k: torch.stack([s[k] for s in starts]).to(dev) for k in own}
        kept = {k: v for k, v in starts[0].items() if k not in self.trainable and k not in personal}
        fixed = {k: v.to(dev) for k, v in kept.items()}
        params = {n: torch.stack([s[n] for s in starts]).to(dev).clone() for n in self.trainable}
        opt = VectorOptimizer(self.settings, params)
        c = len(ids)
        loss_sum = torch.zeros(c, dtype=torch.float64, device=dev)
        scalar_sums: Tensors = {}
        vector_sums: Tensors = {}
        grad_fn = self._grad_fn(fixed)
        with torch.no_grad():  # torch.func computes the gradients; nothing outside needs autograd
            for s in range(num_steps):
                grads, losses, aux = grad_fn(s, params, {k: v[s] for k, v in rows.items()},
                                             {k: v[s] for k, v in step_rows.items()}, personal)
                act = active[s]
                updated = {k[len(_UPDATED):]: v for k, v in aux.items() if k.startswith(_UPDATED)}
                opt.step(params, grads, act, updated, all_active=all_active[s])
                loss_sum += torch.where(act, losses.to(torch.float64), torch.zeros_like(loss_sum))
                for k, v in aux.items():
                    if k.startswith(_UPDATED):
                        continue
                    mask = act.reshape(-1, *([1] * (v.dim() - 1)))
                    masked = torch.where(mask, v.to(torch.float64) if v.dim() == 1 else v, torch.zeros_like(v))
                    target = scalar_sums if v.dim() == 1 else vector_sums
                    target[k] = target[k] + masked if k in target else masked.clone()
        stack = ClientStack({f"model/{n}": v for n, v in {**params, **personal}.items()},
                            {f"model/{k}": v for k, v in kept.items()},
                            [f"model/{k}" for k in self.state_keys])
        updates = []
        share = (time.perf_counter() - started) / len(ids)  # clients of a chunk train together
        for j, cid in enumerate(ids):
            data[cid].aux["train_time_s"] = share
            n_steps = int(steps[j])
            metrics = {"train_loss": float(loss_sum[j]) / max(n_steps, 1)}
            # The loop records batch_loss's metrics once a step ran (a client without samples has none).
            for k, v in scalar_sums.items() if n_steps else ():
                total = float(v[j])
                metrics[k] = total if k in method.summed_metrics else total / max(n_steps, 1)
            metrics["local_steps"] = float(n_steps)
            d = data[cid]
            d.totals.update({k: v[j].detach().cpu() for k, v in vector_sums.items()} if n_steps else {})
            updates.append(method.finish_update(self.state, shards[cid], stack.view(j), d, metrics, ctxs[cid]))
        return updates


# Settings whose batched gradient was checked against autograd in this process -> the verdict
# (None: reproduced, else why not); the check runs once per setting, not every round.
_CHECKED: dict[str, str | bool] = {}  # verdict: the reason (str) or whether torch.func.grad is needed


def _setting(method: Method, cfg: ExperimentConfig, state: RoundState) -> str:
    t = cfg.train
    return json.dumps([type(method).__module__, type(method).__qualname__, cfg.model.model_dump(),
                       state.meta.get("data_spec"), cfg.method.params, t.lr, t.momentum, t.weight_decay,
                       device_of(cfg)], sort_keys=True, default=str)


def method_trainer_for(method: Method, cfg: ExperimentConfig, state: RoundState,
                       sample: MultimodalDataset) -> MethodTrainer | str:
    """A trainer for this round, or the reason to train the clients one by one."""
    reason = method_reason(method)
    if reason:
        return reason
    key = _setting(method, cfg, state)
    if isinstance(_CHECKED.get(key), str):
        return _CHECKED[key]
    trainer = MethodTrainer(method, cfg, state)
    reason = trainer.prepare(sample, check=key not in _CHECKED)
    if key not in _CHECKED:
        _CHECKED[key] = reason or trainer.transform
    elif not reason:
        trainer.transform = bool(_CHECKED[key])
    return reason or trainer
