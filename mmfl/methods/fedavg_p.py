"""FedAvg-P, the FED-PRIME paper's baseline: federated missing-aware prompts, averaged by FedAvg.

The missing-aware prompts of Lee et al. (CVPR 2023) on a frozen ViLT, trained by every client and
averaged by FedAvg (``hangpt01/FedPrime``, ``FedAvg_P``): one prompt set per missing type
(complete / text missing / image missing), chosen for each sample by its own missing type; each set
holds ``prompt_length`` tokens for each of the first ``prompt_layers`` layers, prepended at that
layer's input; pooler + MLP classifier on the text ``[CLS]``. Everything trainable (the three prompt
sets, pooler, classifier) is averaged, sample-weighted. Official defaults: 16 tokens at layers 0-5,
SGD.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.methods.base import NO_RESOURCES, Batch, Context, LocalData, Resources, masked_cross_entropy, params_of
from mmfl.methods.fedprime import vilt_features
from mmfl.methods.frozen_training import FrozenBackboneMethod, image_text_roles
from mmfl.models.backbones import BackboneConfig
from mmfl.models.vilt_prompts import MissingAwareVilt
from mmfl.state import ClientUpdate, RoundState


class FedAvgPParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig, description="Frozen ViLT (random tiny or pretrained)")
    prompt_length: int = Field(16, ge=1, description="Tokens per prompted layer (official 16)")
    prompt_layers: int = Field(6, ge=1, description="Prompted layers from the first (official 6: layers 0-5)")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Client optimiser with train.lr (official SGD)")
    feature_cache: Literal["store", "memory", "off"] = Field("store", description="Where frozen features are cached")


class FedAvgP(FrozenBackboneMethod):
    Params = FedAvgPParams
    vectorizable = True

    def build_model(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> nn.Module:
        p = params_of(cfg)
        image, text = image_text_roles(spec, cfg.method.name)
        text_shape = next(m.shape for m in spec.modalities if m.name == text)
        return MissingAwareVilt(spec.num_classes, spec.names, image, text, text_shape, p.backbone, p.prompt_length,
                                p.prompt_layers, store=resources.store)

    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        state = super().init_state(spec, cfg, resources)
        state.meta["communication"] = []
        return state

    def local_data(self, model: nn.Module, shard: MultimodalDataset, state: RoundState, ctx: Context) -> LocalData:
        return LocalData({}, shard.present, shard.labels, dict(vilt_features(model, shard.inputs, shard.present, ctx)))

    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context):
        f = batch.extra
        return masked_cross_entropy(model.forward_cached(f["embeds"], f["mask"], f["missing_type"]), batch.labels,
                                    batch.weight)

    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        weights = self.average(state, [u.model_weights() for u in updates], [u.num_samples for u in updates], ctx)
        return self.next_state(state, state.with_model(weights), dict(state.meta), updates)

    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        f = vilt_features(model, inputs, present, ctx)
        return model.forward_cached(f["embeds"], f["mask"], f["missing_type"])
