"""FED-PRIME (ICCV 2025): federated prompt-tuning of a frozen ViLT with incomplete modalities.

Each client holds two pools of one-token prompts on a frozen ViLT (``mmfl.models.vilt_prompts``):
intra-client prompts (aggregated by FedAvg) and inter-client prompts (aggregated by
Bayesian-nonparametric matching). A prompt is its own key; each pool's query is a linear
projection of the max-pooled input embeddings, and each client keeps its own projections
(personalised, never averaged). Retrieval is batch-wise: the ``top_k`` prompts most often chosen
in a batch serve every sample of it. The loss is cross-entropy plus ``reg_weight`` times the
retrieval regulariser ``sum (1 - cos(query, prompt))`` (the paper's sign; the official code adds
``+0.01 * sum cos``, which pushes them apart).

Server: pooler, classifier and intra prompts are averaged (sample-weighted FedAvg). The inter
prompts a client retrieved during the round (and only those) go to
``mmfl.aggregation.nonparametric.match_prompts``; its global prompts are the next round's inter
pool, whose size therefore follows the data from round to round. Each client's query projections
are kept in the state under ``client/<id>/`` and handed back only to that client; the global
model keeps the initial projections (as the official server model does), which is what
evaluation uses.

Defaults are the official ones (``hangpt01/FedPrime``: pools of 20, top-k 5, one-token prompts,
SGD, ``reduce_sim_scalar`` 0.01, 5 outer loops); see docs/methods-foundation.md.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mmfl.aggregation.nonparametric import MatchingConfig, match_prompts
from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.errors import ConfigError
from mmfl.methods.base import (NO_RESOURCES, Batch, Context, LocalData, Resources, derive_seed,
                               masked_cross_entropy, params_of)
from mmfl.methods.frozen_training import FrozenBackboneMethod, image_text_roles
from mmfl.models.backbones import BackboneConfig
from mmfl.models.feature_cache import cached_features
from mmfl.models.vilt_prompts import MissingAwareVilt, PrimeVilt
from mmfl.state import ClientUpdate, RoundState

QUERY_KEYS = ("intra.query.weight", "inter.query.weight")  # personalised: stay with their client
INTER = "inter.prompts"  # matched on the server
INTER_SERVED = "inter_served"  # per-prompt count of the steps that retrieved it


class FedPrimeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig, description="Frozen ViLT (random tiny or pretrained)")
    pool_size: int = Field(20, ge=1, description="Prompts per pool at the start (official 20)")
    top_k: int = Field(5, ge=1, description="Prompts retrieved per pool and batch (official 5)")
    prompt_length: int = Field(1, ge=1, description="Tokens per prompt (official 1)")
    reg_weight: float = Field(0.01, ge=0, description="Weight of the retrieval regulariser (official 0.01)")
    outer_loops: int = Field(5, ge=1, description="Alternating assignment / parameter updates of the matching (official 5)")
    sigma_floor: float = Field(0.1, gt=0, lt=1, description="Smallest std of a cluster, in units of the prompts' RMS")
    popularity_weight: float = Field(1.0, ge=0, description="Weight of the learned popularity in the matching (0: off)")
    match_steps: int = Field(50, ge=0, description="Adam steps on the variance and popularity networks per update")
    match_hidden: int = Field(128, ge=1, description="Hidden width of the two matching networks (official 128)")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Client optimiser with train.lr (official SGD)")
    feature_cache: Literal["store", "memory", "off"] = Field("store", description="Where frozen features are cached")


def vilt_features(model: PrimeVilt | MissingAwareVilt, inputs: dict[str, torch.Tensor], present: torch.Tensor,
                  ctx: Context) -> dict[str, torch.Tensor]:
    """Frozen ViLT input embeddings and missing types, through the feature cache (shared with FedAvg-P)."""
    cache = ctx.resources.feature_cache(ctx.params.feature_cache)
    backbone_id = model.backbone_cfg.identity("vilt-embeddings") + f"-{model.image_name}-{model.text_name}"
    return cached_features(cache, backbone_id, inputs, present, model.frozen_features)


def matching_config(p: FedPrimeParams, seed: int) -> MatchingConfig:
    return MatchingConfig(outer_loops=p.outer_loops, fit_steps=p.match_steps, hidden=p.match_hidden,
                          sigma_floor=p.sigma_floor, popularity_weight=p.popularity_weight, seed=seed)


class FedPrime(FrozenBackboneMethod):
    Params = FedPrimeParams
    vectorizable = True

    # ---- model and state -------------------------------------------------------------------
    def build_model(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> nn.Module:
        p = params_of(cfg)
        if p.top_k > p.pool_size:
            raise ConfigError(f"method.params.top_k = {p.top_k}: must not exceed pool_size = {p.pool_size}")
        image, text = image_text_roles(spec, cfg.method.name)
        text_shape = next(m.shape for m in spec.modalities if m.name == text)
        return PrimeVilt(spec.num_classes, spec.names, image, text, text_shape, p.backbone, p.pool_size, p.top_k,
                         p.prompt_length, store=resources.store)

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        state = super().init_state(spec, cfg, resources)
        state.meta["communication"] = []
        state.meta["inter_pool_sizes"] = [int(state.tensors[f"model/{INTER}"].shape[0])]
        return state

    def load_model(self, weights, ctx: Context) -> nn.Module:
        model = self.build_model(ctx.spec, ctx.cfg, ctx.resources)
        model.inter.resize(int(weights[INTER].shape[0]))  # the global inter pool's size varies by round
        model.load_state_dict(dict(weights))
        return model.to(ctx.device)

    # ---- client side -------------------------------------------------------------------------
    def client_weights(self, state: RoundState, client_id: int) -> dict[str, torch.Tensor]:
        """The global model with this client's own query projections (after its first round)."""
        weights = state.model_weights()
        for k in QUERY_KEYS:
            own = state.tensors.get(f"client/{client_id}/{k}")
            if own is not None:
                weights[k] = own
        return weights

    def start_weights(self, state: RoundState, ctx: Context) -> dict[str, torch.Tensor]:
        return self.client_weights(state, ctx.client_id)

    def local_data(self, model: nn.Module, shard: MultimodalDataset, state: RoundState, ctx: Context) -> LocalData:
        """Cached frozen ViLT embeddings; they depend on the frozen backbone only, not on the client's weights."""
        return LocalData({}, shard.present, shard.labels, dict(vilt_features(model, shard.inputs, shard.present, ctx)))

    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context):
        logits, reg, inter_ids = model.forward_cached(batch.extra["embeds"], batch.extra["mask"], batch.weight)
        pool = model.inter.prompts.shape[0]
        # Which inter prompts this step served, as a (pool,) indicator summed over the steps (LocalData.totals).
        served = (inter_ids.unsqueeze(-1) == torch.arange(pool, device=logits.device)).any(0).to(logits.dtype)
        ce = masked_cross_entropy(logits, batch.labels, batch.weight)
        return ce + ctx.params.reg_weight * reg, {"ce": ce.detach(), "retrieval_reg": reg.detach(), INTER_SERVED: served}

    def finish_update(self, state: RoundState, shard: MultimodalDataset, weights, data: LocalData,
                      metrics: dict[str, float], ctx: Context) -> ClientUpdate:
        """The trained model plus ``aux/inter_used``: the inter prompts retrieved at least once (matched on the server)."""
        pool = int(weights[f"model/{INTER}"].shape[0])
        used = data.totals.get(INTER_SERVED, torch.zeros(pool)).cpu() > 0
        metrics["inter_retrieved"] = float(used.sum())
        return self.trained_update(weights, len(shard), metrics, ctx, {"aux/inter_used": used.to(torch.uint8)})

    # ---- server side -------------------------------------------------------------------------
    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        p = ctx.params
        weights = [dict(u.model_weights()) for u in updates]
        shared = [{k: v for k, v in w.items() if k not in QUERY_KEYS and k != INTER} for w in weights]
        new_model = {**state.model_weights(), **self.average(state, shared, [u.num_samples for u in updates], ctx)}
        retrieved = [w[INTER][u.tensors["aux/inter_used"].bool()] for u, w in zip(updates, weights)]
        res = match_prompts(retrieved, matching_config(p, derive_seed(ctx.cfg.seed, ctx.round, 0x1A7E)))
        new_model[INTER] = res.prompts.to(new_model[INTER].dtype)
        tensors = {k: v for k, v in state.tensors.items() if not k.startswith("model/")}
        tensors.update({f"model/{k}": v for k, v in new_model.items()})
        for u, w in zip(updates, weights):
            tensors.update({f"client/{u.client_id}/{k}": w[k].detach().clone() for k in QUERY_KEYS})
        meta = dict(state.meta)
        meta["inter_pool_sizes"] = list(meta.get("inter_pool_sizes", [])) + [int(res.prompts.shape[0])]
        meta["inter_matching"] = {
            "assignments": {str(u.client_id): a.tolist() for u, a in zip(updates, res.assignments)},
            "clients": res.clients.tolist(),
            "popularity": [round(float(v), 6) for v in res.popularity],
            "loops": res.loops,
        }
        return self.next_state(state, tensors, meta, updates)

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        feats = vilt_features(model, inputs, present, ctx)
        # Batch-wise retrieval: test batches of the training batch size, as the official test loader.
        size = ctx.cfg.train.batch_size
        n = int(present.shape[0])
        return torch.cat([model.forward_cached(feats["embeds"][s : s + size], feats["mask"][s : s + size])[0]
                          for s in range(0, n, size)])
