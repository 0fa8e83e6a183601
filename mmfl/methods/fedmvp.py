"""FedMVP (arXiv 2406.11048): frozen foundation encoders, modality completion, contrastive joint
encoder, CKA-weighted aggregation.

Clients run frozen pre-trained encoders (CLIP-style image and text towers; precomputed features
pass through) once per sample (feature cache), complete missing modalities (pluggable generator:
feature-space completion offline, an image-to-text captioner where one is available), and train
only a small joint encoder with cross-entropy plus two contrastive losses:
MCM (multimodal contrastive matching between the modalities of a sample) and RAM (alignment of
the joint representation with each unimodal one). The server runs every client's joint encoder
on the same synthetic probe data and weights clients by their linear-CKA similarity to the
others (``mmfl.aggregation.cka``). Only the joint encoder travels.

The summary names MCM and RAM without formulas; the definitions in ``mmfl.models.joint`` are
ours and are documented in docs/methods-foundation.md, as are the defaults below.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from mmfl.aggregation.cka import cka_weights
from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.state import ClientUpdate, RoundState
from mmfl.errors import ConfigError
from mmfl.methods.base import NO_RESOURCES, Batch, Context, LocalData, Resources, derive_seed, params_of
from mmfl.methods.frozen_training import FrozenBackboneMethod
from mmfl.models.backbones import BackboneConfig
from mmfl.models.completion import CaptionCompletion, check_completion
from mmfl.models.feature_cache import cached_features
from mmfl.models.frozen_encoders import FrozenEncoders
from mmfl.models.joint import JointModel, mcm_loss, ram_loss


class FedMVPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig, description="Frozen CLIP (random tiny or pretrained)")
    joint_dim: int = Field(64, ge=4, description="Width of the joint encoder")
    joint_layers: int = Field(1, ge=1)
    joint_heads: int = Field(2, ge=1)
    mcm_weight: float = Field(0.5, ge=0, description="Weight of the MCM contrastive loss")
    ram_weight: float = Field(0.5, ge=0, description="Weight of the RAM alignment loss")
    completion_weight: float = Field(1.0, ge=0, description="Weight of the feature-completion loss")
    temperature: float = Field(0.1, gt=0, description="Contrastive temperature")
    completion: Literal["feature", "caption", "text_to_image"] = Field("feature", description="Modality completion")
    caption_model: str | None = Field(None, description="Captioner directory for completion='caption'")
    synthetic_samples: int = Field(128, ge=8, description="Server probe samples for CKA")
    cka_temperature: float = Field(0.0, ge=0, description="0: weights = CKA degree x samples; >0: softmax sharpening")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    feature_cache: Literal["store", "memory", "off"] = "store"


class FedMVP(FrozenBackboneMethod):
    Params = FedMVPParams

    def encoders(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> FrozenEncoders:
        return FrozenEncoders(spec, params_of(cfg).backbone, resources.store)

    def build_model(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> nn.Module:
        p = params_of(cfg)
        check_completion(p.completion, p.caption_model)
        if p.joint_dim % p.joint_heads:
            raise ConfigError(f"method.params.joint_dim = {p.joint_dim}: must be divisible by joint_heads = {p.joint_heads}")
        dims = self.encoders(spec, cfg, resources).feature_dims()
        return JointModel(spec.names, dims, spec.num_classes, p.joint_dim, p.joint_layers, p.joint_heads)

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        state = super().init_state(spec, cfg, resources)
        state.meta["communication"] = []
        return state

    # ---- frozen features (+ completion), cached ------------------------------------------
    def prepared(self, inputs: dict[str, torch.Tensor], present: torch.Tensor, ctx: Context):
        p = ctx.params
        cache = ctx.resources.feature_cache(p.feature_cache)
        if p.completion == "caption":
            from mmfl.data.image_text import load_tokenizer

            gen = CaptionCompletion(ctx.spec, p.caption_model, load_tokenizer(ctx.cfg.data.image_text.tokenizer))
            out = cached_features(cache, gen.identity(), inputs, present, gen.generate)
            inputs = {**inputs, gen.text: out["ids"]}
            present = out["present"].bool()
        enc = self.encoders(ctx.spec, ctx.cfg, ctx.resources)
        return cached_features(cache, enc.identity(), inputs, present, enc), present

    # ---- client side -------------------------------------------------------------------------
    def local_data(self, model: nn.Module, shard: MultimodalDataset, state: RoundState, ctx: Context) -> LocalData:
        feats, present = self.prepared(shard.inputs, shard.present, ctx)
        return LocalData({}, present, shard.labels, dict(feats))

    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context):
        p, pres = ctx.params, batch.present
        z = model.tokens(batch.extra)
        h = model.joint(model.completed(z, pres))
        ce = F.cross_entropy(model.head(h), batch.labels)
        mcm, ram, comp = mcm_loss(z, pres, p.temperature), ram_loss(h, z, pres, p.temperature), model.completion_loss(z, pres)
        loss = ce + p.mcm_weight * mcm + p.ram_weight * ram + p.completion_weight * comp
        return loss, {"ce": float(ce.detach()), "mcm": float(mcm.detach()), "ram": float(ram.detach()),
                      "completion": float(comp.detach())}

    def client_update(self, state: RoundState, shard: MultimodalDataset, ctx: Context) -> ClientUpdate:
        model = self.load_model(state.model_weights(), ctx)
        return self.trained_update(model, len(shard), self.train_local(model, shard, ctx, state), ctx)

    # ---- server side -------------------------------------------------------------------------
    def synthetic_probe(self, ctx: Context) -> dict[str, torch.Tensor]:
        """Server-side synthetic data in each modality's frozen feature space: seeded Gaussian
        features (the offline stand-in for generated samples; every input passes a LayerNorm)."""
        g = torch.Generator().manual_seed(derive_seed(ctx.cfg.seed, ctx.round, 0x5C4A))
        dims = self.encoders(ctx.spec, ctx.cfg, ctx.resources).feature_dims()
        return {f"f/{n}": torch.randn(ctx.params.synthetic_samples, dims[n], generator=g) for n in ctx.spec.names}

    @torch.no_grad()
    def representations(self, weights: list[dict[str, torch.Tensor]], ctx: Context) -> list[torch.Tensor]:
        probe = self.synthetic_probe(ctx)
        present = torch.ones(ctx.params.synthetic_samples, len(ctx.spec.names), dtype=torch.bool)
        reps = []
        for w in weights:
            model = self.load_model(w, ctx).eval()
            reps.append(model.joint(model.completed(model.tokens(probe), present)))
        return reps

    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        weights = [u.model_weights() for u in updates]
        sizes = [u.num_samples for u in updates]
        w = cka_weights(self.representations(weights, ctx), sizes, ctx.params.cka_temperature)
        new = self.average(state, weights, w.tolist(), ctx)
        meta = dict(state.meta)
        meta["cka_weights"] = list(meta.get("cka_weights", [])) + [
            {"round": state.round + 1, "clients": [u.client_id for u in updates], "weights": [float(x) for x in w]}
        ]
        return self.next_state(state, state.with_model(new), meta, updates)

    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        feats, present = self.prepared(inputs, present, ctx)
        return model(feats, present.to(ctx.device))

