"""FlexMod (2024): train modality encoders as often as they deserve, scheduled by a DDPG agent.

Per round (server, schedule step):
  1. encoder quality q_m from the global prototypes (class separation, ``scheduling.quality``);
  2. modality importance phi_m: exact Shapley values of the global model's validation accuracy
     over modality subsets (clients evaluate every subset on their held-out validation part);
  3. a DDPG agent maps state (phi, q, previous beta, progress) to beta_r in [0, 1]; its reward
     (``reward: global``, the paper) is the gain in the global model's validation accuracy (the
     full coalition's value of step 2), which arrives one round after the model was trained
     (``scheduling/reward.py``); ``reward: local`` is mmfl's earlier signal, the gain in the
     clients' validation accuracy right after local training;
  4. each non-empty combination S gets weight
     ``beta_r * sum_{m in S} phi_m + (1 - beta_r) * sum_{m in S} (1 - q_m) / sum_m (1 - q_m)``
     and a convex program turns weights into shares of local steps under a training-cost budget:
     ``sum_S x_S cost(S) <= budget * cost(all)``, cost(S) the sum of the measured training FLOPs
     (backward pass) of S's encoders (``cost: flops``; ``cost: count`` counts encoders instead).
Clients then train combinations in cardinality order (largest first); in a step for S only the
encoders of S are updated, fusion and head always train. The step plan is a per-step mask
(``LocalData.per_step``), so the vectorized engine trains many clients' plans together: the
untrained encoders' embeddings are detached and ``updated_params`` leaves their parameters (and
optimiser state) untouched; one client at a time they run without autograd.
Each client reports encoder updates (one per encoder per step), encoder FLOPs (every encoder's
forward plus the trained encoders' backward, ``scheduling/costs.py``) and its training wall time.

``PartialUpdate`` (``partial_update.py``, registry name ``partial_update``) is the Partial Update baseline: the same
scheduled training at the same cost budget, with a fixed allocation from equal combination
weights (no prototypes, Shapley values or agent; no validation hold-out).

Validation: a fixed share ``val_fraction`` of each client's shard (chosen by (seed, client),
the same every round) is held out from training; the server never sees data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.methods.base import (
    NO_RESOURCES, Batch, Context, LocalData, Method, Resources, derive_seed, masked_cross_entropy,
)
from mmfl.methods.prototypes import aggregate_prototypes, compute_prototypes, empty_prototypes, proto_keys
from mmfl.scheduling import (
    DDPGAgent, DDPGConfig, allocate_frequencies, encoder_quality, modality_combinations, normalized_importance,
    shapley_values, step_plan,
)
from mmfl.scheduling.allocation import check_feasible
from mmfl.scheduling.costs import EncoderCost, measure_encoders, step_encoder_flops
from mmfl.scheduling.reward import initial_memory, remember, reward_transition
from mmfl.scheduling.shapley import all_coalitions, coalition_key
from mmfl.state import ClientUpdate, RoundState

AGENT = "flexmod/agent/"
ALLOC = "flexmod/alloc"


class BudgetParams(BaseModel):
    """The allocation program's settings, shared by FlexMod and the Partial Update baseline."""

    model_config = ConfigDict(extra="forbid")
    budget: float = Field(
        0.6, gt=0, le=1,
        description="Encoder training cost per local step as a share of training every encoder every step (chosen: 0.6)")
    min_frequency: float = Field(0.05, ge=0, lt=1, description="Lower bound of each combination's share of steps (chosen)")
    reg: float = Field(1.0, ge=0, description="Quadratic spreading term of the allocation program (chosen)")
    cost: Literal["flops", "count"] = Field(
        "flops", description="Encoder training cost in the budget: flops = measured backward FLOPs per encoder "
                             "(paper: training complexity); count = every encoder alike (mmfl's earlier |S|)")


class FlexModParams(BudgetParams):
    """Values the paper summary does not state are standard choices, marked as such."""

    val_fraction: float = Field(
        0.05, ge=0, lt=1,
        description=("Share of each client's shard held out for Shapley values and the reward (chosen); 0 = evaluate "
                     "on the training shard itself (no held-out data, a weaker signal)"))
    initial_beta: float = Field(0.5, ge=0, le=1, description="beta before the agent has acted (round 1)")
    reward_scale: float = Field(100.0, gt=0, description="Reward = scale * validation-accuracy gain (in points; chosen)")
    reward: Literal["global", "local"] = Field(
        "global", description="global: gain of the global model's validation accuracy (paper); local: gain of the "
                              "clients' validation accuracy after local training (mmfl's earlier signal)")
    ddpg_hidden: int = Field(64, ge=1, description="Actor/critic hidden width (DDPG default-style choice)")
    ddpg_actor_lr: float = Field(1e-4, gt=0, description="Actor Adam learning rate (DDPG paper: 1e-4)")
    ddpg_critic_lr: float = Field(1e-3, gt=0, description="Critic Adam learning rate (DDPG paper: 1e-3)")
    ddpg_gamma: float = Field(0.99, ge=0, le=1, description="Discount factor (DDPG paper: 0.99)")
    ddpg_tau: float = Field(0.005, gt=0, le=1, description="Target network soft-update rate (common DDPG choice)")
    ddpg_noise_std: float = Field(0.1, ge=0, description="Std of Gaussian exploration noise on beta (chosen)")
    ddpg_buffer_size: int = Field(1000, ge=1, description="Replay buffer capacity (chosen)")
    ddpg_batch_size: int = Field(16, ge=1, description="Replay minibatch size (chosen; few rounds give few transitions)")
    ddpg_updates: int = Field(8, ge=1, description="Gradient updates of the agent per round (chosen)")

    def ddpg(self) -> DDPGConfig:
        return DDPGConfig(self.ddpg_hidden, self.ddpg_actor_lr, self.ddpg_critic_lr, self.ddpg_gamma, self.ddpg_tau,
                          self.ddpg_noise_std, self.ddpg_buffer_size, self.ddpg_batch_size, self.ddpg_updates)


def combination_weights(beta: float, importance: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Weight of every combination (``modality_combinations`` order): beta * importance + (1-beta) * need."""
    need = 1.0 - np.asarray(quality, dtype=float)
    need = need / need.sum() if need.sum() > 0 else np.full(len(need), 1.0 / len(need))
    return np.array([beta * importance[list(c)].sum() + (1 - beta) * need[list(c)].sum()
                     for c in modality_combinations(len(importance))])


def split_validation(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), fixed per (experiment seed, client)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(max(1, int(round(fraction * n))), n - 1) if n > 1 and fraction > 0 else 0
    return perm[k:].sort().values, perm[:k].sort().values


@torch.no_grad()
def subset_accuracies(model: nn.Module, data: MultimodalDataset, names: tuple[str, ...]) -> dict[str, float]:
    """Accuracy with only the modalities of each coalition (the others masked), every coalition."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    inputs = {k: v.to(device) for k, v in data.inputs.items()}
    labels = data.labels.to(device)
    for coalition in all_coalitions(len(names)):
        keep = torch.tensor([j in coalition for j in range(len(names))])
        present = (data.present & keep).to(device)
        pred = model(inputs, present).argmax(dim=1)
        out[coalition_key(coalition, len(names))] = float((pred == labels).float().mean()) if len(data) else 0.0
    return out


def partial_logits(model: nn.Module, inputs: dict[str, torch.Tensor], present: torch.Tensor, trained: torch.Tensor,
                   concrete: bool = False) -> torch.Tensor:
    """Forward pass in which only the encoders with ``trained[j]`` (a (M,) bool tensor) pass gradients back.

    Every encoder runs forward (the fusion needs all embeddings); the untrained ones' embeddings
    are detached (``torch.where``), so their parameters get zero gradients, which ``updated_params``
    turns into no update at all. This form runs under ``vmap``, where the clients of one step train
    different encoders. ``concrete`` (the loop: one client, ``trained`` a plain tensor) runs the
    untrained encoders without autograd instead: the same values and gradients, without their
    backward pass.
    """
    flags = trained.tolist() if concrete else None
    embs = []
    for j, name in enumerate(model.names):
        if flags is not None and not flags[j]:
            with torch.no_grad():
                embs.append(model.encoders[name](inputs[name]))
            continue
        emb = model.encoders[name](inputs[name])
        embs.append(emb if flags is not None else torch.where(trained[j], emb, emb.detach()))
    tokens = model.substitute(torch.stack(embs, dim=1), present)
    return model.head(model.fuse(tokens))


def step_masks(shares: np.ndarray, steps: int, costs: list[EncoderCost]) -> dict[str, torch.Tensor]:
    """The step plan as per-step tensors: ``trained`` (steps, M) bool, the encoders each local step
    trains (combinations by cardinality, largest first), and ``flops`` (steps,) float64, the encoder
    FLOPs of that step per sample (every encoder forward, the trained ones backward)."""
    combos = modality_combinations(len(costs))
    plan = step_plan(shares, steps)
    trained = torch.zeros(len(plan), len(costs), dtype=torch.bool)
    for s, k in enumerate(plan):
        trained[s, list(combos[k])] = True
    flops = torch.tensor([step_encoder_flops(costs, combos[k], 1) for k in plan], dtype=torch.float64)
    return {"trained": trained, "flops": flops}


def measured_costs(method: Method, spec: DataSpec, cfg: ExperimentConfig) -> dict[str, dict]:
    """Per-encoder FLOPs per sample (forward, backward) of the method's model's encoders, as JSON."""
    with torch.random.fork_rng(devices=[]):  # a throw-away model: leave the global generator alone
        model = method.build_model(spec, cfg)
    return {k: c.to_json() for k, c in measure_encoders(model.encoders, spec.modalities).items()}


def budget_costs(costs: dict[str, dict], names: tuple[str, ...], p: BudgetParams) -> list[float] | None:
    """The encoder costs in the allocation constraint: backward FLOPs (``cost: flops``) or None (count)."""
    return [float(costs[n]["backward"]) for n in names] if p.cost == "flops" else None


def initial_allocation(
    method: Method, spec: DataSpec, cfg: ExperimentConfig, p: BudgetParams, weights: np.ndarray,
) -> tuple[dict[str, dict], np.ndarray]:
    """(measured encoder costs, allocation for ``weights``) before round 1; an infeasible budget raises ConfigError."""
    costs = measured_costs(method, spec, cfg)
    enc = budget_costs(costs, spec.names, p)
    check_feasible(len(spec.names), p.budget, p.min_frequency, enc)
    return costs, allocate_frequencies(weights, len(spec.names), p.budget, p.min_frequency, p.reg, enc)


def train_time(data: LocalData) -> float:
    """A client's training wall time: the time since ``local_data`` began (one client at a time), or
    the engine's ``aux["train_time_s"]`` (clients trained together share their chunk's time)."""
    if "train_time_s" in data.aux:
        return float(data.aux["train_time_s"])
    return time.perf_counter() - data.aux["started"]


class FlexMod(Method):
    Params = FlexModParams
    uses_prototypes = True
    uses_schedule = True
    summed_metrics = ("encoder_updates", "encoder_flops")
    meta_key = "flexmod"  # where the state keeps the measured encoder costs

    # ---- state ----------------------------------------------------------------------------
    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        state = super().init_state(spec, cfg, resources)
        p: FlexModParams = self.Params.model_validate(cfg.method.params)
        m = len(spec.names)
        costs, alloc = initial_allocation(self, spec, cfg, p, combination_weights(p.initial_beta, np.full(m, 1.0 / m),
                                                                                 np.zeros(m)))
        state.tensors.update(empty_prototypes(proto_keys(spec.names), spec.num_classes, cfg.model.embed_dim))
        agent = DDPGAgent(2 * m + 2, p.ddpg(), seed=derive_seed(cfg.seed, 0xDD96))
        tensors, agent_meta = agent.to_tensors(AGENT)
        state.tensors.update(tensors)
        state.tensors[ALLOC] = torch.tensor(alloc, dtype=torch.float64)
        state.meta["flexmod"] = {
            "agent": agent_meta, "beta": p.initial_beta, "obs": None, "val_acc": None,
            "reward_memory": initial_memory(p.initial_beta), "encoder_costs": costs,
            "combinations": [[spec.names[j] for j in c] for c in modality_combinations(m)], "history": [],
        }
        return state

    # ---- client ---------------------------------------------------------------------------
    # The base class's ``client_update`` (and the vectorized engine) call these hooks: train on the
    # training part of the shard with the step plan as per-step masks, then report.
    vectorizable = True

    def validation_split(self, shard: MultimodalDataset, ctx: Context) -> tuple[MultimodalDataset, MultimodalDataset]:
        """(training part, validation part) of a client's shard, fixed per (seed, client)."""
        p: FlexModParams = ctx.params
        if p.val_fraction == 0:
            return shard, shard
        train_idx, val_idx = split_validation(len(shard), p.val_fraction, derive_seed(ctx.cfg.seed, ctx.client_id, 0x7A1))
        return shard.subset(train_idx), shard.subset(val_idx)

    def training_shard(self, shard: MultimodalDataset, ctx: Context) -> MultimodalDataset:
        return self.validation_split(shard, ctx)[0]

    def finish_update(self, state: RoundState, shard: MultimodalDataset, weights: Mapping[str, torch.Tensor],
                      data: LocalData, metrics: dict[str, float], ctx: Context) -> ClientUpdate:
        """Validation accuracies of the received global model for every coalition (Shapley values and
        the reward), with ``reward: local`` also the trained model's; the training wall time."""
        p: FlexModParams = ctx.params
        names = ctx.spec.names
        val = self.validation_split(shard, ctx)[1]
        metrics = {**metrics, "train_time_s": train_time(data)}
        update = ClientUpdate(ctx.client_id, len(data), weights, metrics, {"val_samples": len(val)})
        values = subset_accuracies(self.eval_model(state.model_weights(), ctx), val, names)
        if p.reward == "local":
            full_key = coalition_key(frozenset(range(len(names))), len(names))
            metrics["val_acc"] = subset_accuracies(self.eval_model(update.model_weights(), ctx), val, names)[full_key]
        metrics.update({f"value/{k}": v for k, v in values.items()})
        return update

    def eval_model(self, weights: Mapping[str, torch.Tensor], ctx: Context) -> nn.Module:
        """A model with ``weights`` for evaluation, built without touching the global random generator."""
        with torch.random.fork_rng(devices=[]):
            return self.load_model(weights, ctx)

    def local_data(self, model: nn.Module, shard: MultimodalDataset, state: RoundState, ctx: Context) -> LocalData:
        """The shard plus the step plan (``step_masks``) as per-step tensors; ``aux`` keeps the start time."""
        started = time.perf_counter()
        steps = self.local_epochs(ctx) * -(-len(shard) // self.local_batch_size(ctx, len(shard)))
        costs = state.meta[self.meta_key]["encoder_costs"]
        per_step = step_masks(state.tensors[ALLOC].numpy(), steps, [EncoderCost.from_json(costs[n]) for n in ctx.spec.names])
        return LocalData(dict(shard.inputs), shard.present, shard.labels, aux={"started": started}, per_step=per_step)

    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context):
        """Cross-entropy with only the step's encoders trained; encoder updates and FLOPs (real samples)."""
        trained = batch.step_data["trained"]
        logits = partial_logits(model, batch.inputs, batch.present, trained, concrete=batch.weight is None)
        samples = (torch.tensor(float(len(batch)), dtype=torch.float64) if batch.weight is None
                   else batch.weight.to(torch.float64).sum())
        return masked_cross_entropy(logits, batch.labels, batch.weight), {
            "encoder_updates": trained.to(torch.float64).sum(), "encoder_flops": batch.step_data["flops"] * samples}

    def updated_params(self, model: nn.Module, batch: Batch, ctx: Context) -> Mapping[str, torch.Tensor]:
        """An encoder's parameters are updated only in the steps that train it (the rest: every step)."""
        trained = batch.step_data["trained"]
        return {f"encoders.{n}.{k}": trained[j]
                for j, n in enumerate(model.names) for k, _ in model.encoders[n].named_parameters()}

    def client_prototypes(self, state: RoundState, update: ClientUpdate, shard: MultimodalDataset, ctx: Context):
        model = self.load_model(update.model_weights(), ctx)
        return compute_prototypes(model, shard, ctx.spec.num_classes, device=ctx.device)

    # ---- server ---------------------------------------------------------------------------
    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        new = super().aggregate(state, updates, ctx)
        keys = proto_keys(ctx.spec.names)
        if all(f"proto/{k}" in u.tensors for u in updates for k in keys):
            new.tensors.update(aggregate_prototypes([u.tensors for u in updates], keys, state.tensors))
        vw = np.array([float(u.meta.get("val_samples", 1)) for u in updates])
        vw = vw / vw.sum()
        value_keys = sorted({k for u in updates for k in u.metrics if k.startswith("value/")})
        fm = dict(new.meta["flexmod"])
        fm["round_stats"] = {
            "values": {k[len("value/"):]: float(sum(w * u.metrics.get(k, 0.0) for w, u in zip(vw, updates)))
                       for k in value_keys},
            "val_acc": (float(sum(w * u.metrics["val_acc"] for w, u in zip(vw, updates)))
                        if all("val_acc" in u.metrics for u in updates) else None),  # reward: local only
            "encoder_updates": float(sum(u.metrics.get("encoder_updates", 0.0) for u in updates)),
            "encoder_flops": float(sum(u.metrics.get("encoder_flops", 0.0) for u in updates)),
            "local_steps": float(sum(u.metrics.get("local_steps", 0.0) for u in updates)),
        }
        new.meta["flexmod"] = fm
        return new

    def schedule(self, state: RoundState, ctx: Context, eval_metrics: dict[str, Any] | None = None) -> RoundState:
        """Quality, Shapley importance, DDPG beta_r (learning from the last one's reward), allocation."""
        p: FlexModParams = ctx.params
        names = ctx.spec.names
        m = len(names)
        fm = dict(state.meta["flexmod"])
        stats = fm.get("round_stats")
        if stats is None:
            return state
        quality = np.array([encoder_quality(state.tensors[f"proto/{n}"], state.tensors[f"proto_count/{n}"]) for n in names])
        values = stats["values"]
        phi = shapley_values(m, lambda c: values.get(coalition_key(c, m), 0.0))
        importance = normalized_importance(phi)
        progress = state.round / max(ctx.cfg.train.rounds, 1)
        obs = [*importance.tolist(), *quality.tolist(), float(fm["beta"]), progress]

        agent = DDPGAgent.from_tensors(state.tensors, fm["agent"], AGENT)
        gen = torch.Generator().manual_seed(derive_seed(ctx.cfg.seed, ctx.round, 0xDD))  # server: no client id
        reward, losses = None, {}
        global_acc = values.get(coalition_key(frozenset(range(m)), m), 0.0)  # the received global model's
        if p.reward == "global":
            transition = reward_transition(fm["reward_memory"], global_acc, p.reward_scale)
        elif fm.get("obs") is not None and fm.get("val_acc") is not None:
            transition = (fm["obs"], fm["beta"], p.reward_scale * (stats["val_acc"] - fm["val_acc"]), obs)
        else:
            transition = None
        if transition is not None:
            reward = transition[2]
            agent.store(*transition)
            losses = agent.learn(gen)
        beta = agent.act(obs, gen)
        alloc = allocate_frequencies(combination_weights(beta, importance, quality), m, p.budget, p.min_frequency, p.reg,
                                     budget_costs(fm["encoder_costs"], names, p))

        tensors = dict(state.tensors)
        agent_tensors, agent_meta = agent.to_tensors(AGENT)
        tensors.update(agent_tensors)
        tensors[ALLOC] = torch.tensor(alloc, dtype=torch.float64)
        entry = {
            "round": state.round, "beta": beta, "allocation": alloc.tolist(), "importance": importance.tolist(),
            "shapley": phi.tolist(), "quality": quality.tolist(), "reward": reward, "global_val_acc": global_acc,
            "val_acc": stats["val_acc"], "encoder_updates": stats["encoder_updates"],
            "encoder_flops": stats["encoder_flops"], "local_steps": stats["local_steps"], **losses,
        }
        fm.update({"agent": agent_meta, "beta": beta, "obs": obs, "val_acc": stats["val_acc"],
                   "reward_memory": remember(fm["reward_memory"], global_acc, obs, beta),
                   "history": [*fm.get("history", []), entry]})
        fm.pop("round_stats", None)
        return RoundState(state.round, tensors, {**state.meta, "flexmod": fm})


__all__ = ["BudgetParams", "FlexMod", "FlexModParams", "combination_weights", "initial_allocation", "partial_logits",
           "step_masks", "train_time"]
