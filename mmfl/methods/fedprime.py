"""FED-PRIME (ICCV 2025): federated prompt-tuning of a frozen ViLT with incomplete modalities.

Each client holds two prompt pools on a frozen ViLT: inter-client prompts (input-level missing
patterns, aligned across clients) and intra-client prompts (aggregated by FedAvg). For every
sample the top-k prompts of each pool are retrieved by cosine similarity between a learned query
of the input and learned prompt keys; a regulariser pulls the selected keys towards the query so
each prompt specialises on a neighbourhood of inputs. The server averages intra prompts, query and
head (FedAvg) and aggregates inter prompts by clustering alignment: a Hungarian assignment of each
client's prompts to cluster centres with a popularity bonus (``mmfl.aggregation.alignment``).

Only prompts, keys, query map and head travel; the backbone is rebuilt or loaded from the config
on each side, and its frozen features are computed once per sample (``mmfl.models.feature_cache``).

Defaults: the summary gives no pool size, k, prompt length or weights; the values below are
chosen for small backbones and documented in docs/methods-foundation.md.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from mmfl.aggregation.alignment import align_and_aggregate
from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.state import ClientUpdate, RoundState
from mmfl.errors import ConfigError
from mmfl.methods.base import NO_RESOURCES, Batch, Context, LocalData, Resources, derive_seed, params_of
from mmfl.methods.frozen_training import FrozenBackboneMethod, image_text_roles
from mmfl.models.backbones import BackboneConfig
from mmfl.models.feature_cache import cached_features
from mmfl.models.prompted_vilt import PromptedVilt

INTER = ("inter_prompts", "inter_keys")


class FedPrimeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig, description="Frozen ViLT (random tiny or pretrained)")
    pool_size: int = Field(8, ge=1, description="Prompts per pool (tau); default chosen, not given in the summary")
    top_k: int = Field(2, ge=1, description="Prompts retrieved per pool and sample (kappa)")
    prompt_length: int = Field(4, ge=1, description="Tokens per prompt")
    reg_weight: float = Field(0.1, ge=0, description="Weight of the retrieval regulariser r(x, w'_p)")
    num_clusters: int | None = Field(None, ge=1, description="Server clusters Q for inter prompts (None = pool_size)")
    popularity_weight: float = Field(0.5, ge=0, description="Weight of the popularity term R(alpha, zeta)")
    popularity_momentum: float = Field(0.5, ge=0, lt=1, description="EMA of the popularity logits across rounds")
    align_iterations: int = Field(3, ge=1, description="Alternating assignment/centre-update iterations")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    feature_cache: Literal["store", "memory", "off"] = Field("store", description="Where frozen features are cached")


class FedPrime(FrozenBackboneMethod):
    Params = FedPrimeParams
    pools = True  # the FedAvg-prompts baseline sets False: one fixed prompt set, averaged

    # ---- model and state -------------------------------------------------------------------
    def build_model(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> nn.Module:
        p = params_of(cfg)
        if p.top_k > p.pool_size:
            raise ConfigError(f"method.params.top_k = {p.top_k}: must not exceed pool_size = {p.pool_size}")
        image, text = image_text_roles(spec, cfg.method.name)
        text_shape = next(m.shape for m in spec.modalities if m.name == text)
        return PromptedVilt(spec.num_classes, image, text, text_shape, p.backbone, p.pool_size, p.top_k,
                            p.prompt_length, pools=self.pools, store=resources.store)

    def num_clusters(self, p: FedPrimeParams) -> int:
        q = p.num_clusters or p.pool_size
        if q < p.pool_size:
            raise ConfigError(f"method.params.num_clusters = {q}: must be >= pool_size = {p.pool_size}")
        return q

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, 0xC0FFEE))
            model = self.build_model(spec, cfg, resources)
        tensors = {f"model/{k}": v.detach().clone() for k, v in model.state_dict().items()}
        meta = {"method": self.name, "data_spec": spec.to_json(), "communication": []}
        if self.pools:
            p = params_of(cfg)
            q = self.num_clusters(p)
            g = torch.Generator().manual_seed(derive_seed(cfg.seed, 0xC1A5))
            prompts, keys = model.inter_prompts.detach(), model.inter_keys.detach()
            extra = q - prompts.shape[0]
            tensors["server/inter_prompts"] = torch.cat([prompts, torch.randn(extra, *prompts.shape[1:], generator=g) * 0.02])
            tensors["server/inter_keys"] = torch.cat([keys, torch.rand(extra, keys.shape[1], generator=g) * 2 - 1])
            tensors["server/inter_popularity"] = torch.zeros(q)
            meta["inter_slots"] = list(range(p.pool_size))
        return RoundState(0, tensors, meta)

    # ---- frozen features -------------------------------------------------------------------
    def features(self, model: PromptedVilt, inputs: dict[str, torch.Tensor], present: torch.Tensor, ctx: Context):
        cache = ctx.resources.feature_cache(ctx.params.feature_cache)
        backbone_id = model.backbone_cfg.identity("vilt") + f"-{model.image_name}-{model.text_name}"
        return cached_features(cache, backbone_id, inputs, present, model.frozen_features)

    # ---- client side -------------------------------------------------------------------------
    def local_data(self, model: nn.Module, shard: MultimodalDataset, state: RoundState, ctx: Context) -> LocalData:
        feats = dict(self.features(model, shard.inputs, shard.present, ctx))
        return LocalData({}, shard.present, shard.labels, feats, aux={"usage": torch.zeros(model.inter_prompts.shape[0])})

    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context):
        f = batch.extra
        logits, reg, used = model.forward_cached(f["embeds"], f["mask"], f["query"])
        if used is not None:
            usage = batch.aux["usage"]
            usage.add_(torch.bincount(used.flatten().cpu(), minlength=usage.numel()).float())
        ce = F.cross_entropy(logits, batch.labels)
        return ce + ctx.params.reg_weight * reg, {"ce": float(ce.detach()), "retrieval_reg": float(reg.detach())}

    def client_update(self, state: RoundState, shard: MultimodalDataset, ctx: Context) -> ClientUpdate:
        model = self.load_model(state.model_weights(), ctx)
        data = self.local_data(model, shard, state, ctx)
        metrics = self.run_local(model, data, ctx, state)
        extra = {"aux/inter_usage": data.aux["usage"]} if self.pools else None
        return self.trained_update(model, len(shard), metrics, ctx, extra)

    # ---- server side -------------------------------------------------------------------------
    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        weights = [u.model_weights() for u in updates]
        sizes = [u.num_samples for u in updates]
        meta = dict(state.meta)
        tensors = {k: v for k, v in state.tensors.items()}
        if not self.pools:
            new_model = self.average(state, weights, sizes, ctx)
        else:
            p = ctx.params
            shared = [{k: v for k, v in w.items() if k not in INTER} for w in weights]
            new_model = self.average(state, shared, sizes, ctx)
            centers = torch.cat([tensors["server/inter_prompts"].flatten(1), tensors["server/inter_keys"]], dim=1)
            client_vecs, client_w = [], []
            for u, w in zip(updates, weights):
                client_vecs.append(torch.cat([w["inter_prompts"].flatten(1), w["inter_keys"]], dim=1))
                use = u.tensors.get("aux/inter_usage", torch.ones(w["inter_prompts"].shape[0]))
                # Prompts a client never retrieved carry little about its data: weight by use.
                client_w.append(u.num_samples * (use.double() + 1.0) / (use.double().sum() + use.numel()))
            res = align_and_aggregate(client_vecs, centers, tensors["server/inter_popularity"], client_w,
                                      p.popularity_weight, p.align_iterations, p.popularity_momentum)
            shape = tensors["server/inter_prompts"].shape
            plen = shape[1] * shape[2]
            tensors["server/inter_prompts"] = res.centers[:, :plen].reshape(shape).float()
            tensors["server/inter_keys"] = res.centers[:, plen:].float()
            tensors["server/inter_popularity"] = res.popularity.float()
            # Clients get the pool_size most popular clusters (ties: lower index first), in index order.
            order = torch.argsort(-res.popularity, stable=True)[: p.pool_size]
            slots = sorted(order.tolist())
            new_model["inter_prompts"] = tensors["server/inter_prompts"][slots].clone()
            new_model["inter_keys"] = tensors["server/inter_keys"][slots].clone()
            meta["inter_slots"] = slots
            meta["last_assignment"] = {str(u.client_id): a.tolist() for u, a in zip(updates, res.assignments)}
        return self.next_state(state, {**{k: v for k, v in tensors.items() if not k.startswith("model/")},
                                       **{f"model/{k}": v for k, v in new_model.items()}}, meta, updates)

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        feats = self.features(model, inputs, present, ctx)
        return model.forward_cached(feats["embeds"], feats["mask"], feats["query"])[0]

