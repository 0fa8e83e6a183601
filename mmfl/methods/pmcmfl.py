"""PmcmFL (Bao et al., 2023): a global prototype library as masks for missing modalities, plus contrast.

Round: clients receive the global model and the prototype library (per class, per modality and
fused); in local training a missing modality's embedding is replaced by the library prototype
of the sample's class (prototype mask), the task-calibrated loss supervises the prediction and
a proximal prototype contrastive loss pulls every representation to its class prototype. In
the prototype-upload step each client computes class means of its trained model's embeddings;
the server averages models (FedAvg) and prototypes (count-weighted). At inference a sample
missing a modality is completed from the library by prototype matching of what it has.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.errors import ConfigError
from mmfl.methods.base import NO_RESOURCES, Batch, Context, Method, Resources
from mmfl.methods.pmcmfl_losses import paper_contrast_terms, prototype_contrastive_loss, task_calibrated_loss
from mmfl.state import ClientUpdate, RoundState
from mmfl.methods.prototypes import (
    FUSED, aggregate_prototypes, compute_prototypes, empty_prototypes, library, proto_keys,
)

Inference = Literal["classifier", "retrieval", "l1", "l2", "cosine"]
Distance = Literal["l1", "l2", "cosine"]
Variant = Literal["paper", "mmfl"]

# Defaults per variant. paper: the paper and its official code (Noirebao/Multimodal_Federated);
# mmfl: this project's earlier reading, kept as a named variant (docs/methods.md).
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {"mask_weight": 1.0, "contrast": "batch", "temperature": 0.07, "fused_weight": 0.01,
              "modality_weight": 0.0, "contrast_start_round": 2, "prototype_samples": "complete",
              "inference": "retrieval"},
    "mmfl": {"mask_weight": 0.5, "contrast": "classes", "temperature": 0.5, "contrast_weight": 1.0,
             "contrast_fused": True, "contrast_start_round": 1, "prototype_samples": "present",
             "inference": "classifier"},
}
_ONLY = {"paper": ("fused_weight", "modality_weight", "modality_weights"), "mmfl": ("contrast_weight", "contrast_fused")}


class PmcmFLParams(BaseModel):
    """PmcmFL's parameters; a field left unset takes the default of the chosen ``variant``."""

    model_config = ConfigDict(extra="forbid")
    variant: Variant = Field(
        "paper", description="paper: the paper and its official code; mmfl: this project's earlier variant")
    mask_weight: float | None = Field(
        None, ge=0, le=1,
        description="Task loss weight factor per prototype-masked modality of a sample (paper 1.0 = plain task loss; mmfl 0.5)")
    contrast: Literal["batch", "classes"] | None = Field(
        None, description=("batch: dot product of each representation with its class prototype, the batch's other "
                           "samples' prototypes as negatives (paper); classes: cosine InfoNCE against every class "
                           "prototype (mmfl)"))
    temperature: float | None = Field(None, gt=0, description="Contrast temperature (paper 0.07, mmfl 0.5)")
    fused_weight: float | None = Field(None, ge=0, description="paper: weight of the fused-representation contrast (0.01)")
    modality_weight: float | None = Field(
        None, ge=0, description="paper: weight of each modality's contrast (0; the official code uses 1e-8)")
    modality_weights: dict[str, float] | None = Field(
        None, description="paper: per-modality contrast weights, overriding modality_weight for the named modalities")
    contrast_weight: float | None = Field(
        None, ge=0, description="mmfl: weight of the mean over the modality and fused contrast terms (1.0)")
    contrast_fused: bool | None = Field(None, description="mmfl: also contrast the fused representation (true)")
    contrast_start_round: int | None = Field(
        None, ge=1, description="First round with the contrast (paper 2; mmfl 1 = whenever prototypes exist)")
    prototype_samples: Literal["complete", "present"] | None = Field(
        None, description=("Samples behind a client's prototypes: complete = its complete samples only (paper); "
                           "present = every sample that has the modality (mmfl)"))
    inference: Inference | None = Field(
        None,
        description=("Uni-modal inference: retrieval = mask the missing modality with the prototype of the nearest "
                     "class and classify (paper default); l1 / l2 / cosine = the nearest class prototype is the "
                     "prediction, without the model (model-free); classifier = mask with the similarity-weighted "
                     "mixture of prototypes and classify (mmfl)"))
    match_distance: Distance = Field("cosine", description="Distance used by retrieval / classifier matching (chosen)")
    match_temperature: float = Field(
        0.1, gt=0, description="Softmax temperature of the classifier option's prototype mixture (chosen default)")

    @model_validator(mode="after")
    def _fill_variant(self) -> "PmcmFLParams":
        other = "mmfl" if self.variant == "paper" else "paper"
        for name in _ONLY[other]:
            if getattr(self, name) is not None:
                raise ValueError(f"{name} applies to variant {other!r} (variant is {self.variant!r})")
        for name, value in VARIANT_DEFAULTS[self.variant].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        return self

    def modality_weight_vector(self, names: tuple[str, ...] | list[str]) -> torch.Tensor:
        """(M,) weights of the modality contrast terms (paper variant)."""
        given = self.modality_weights or {}
        unknown = [k for k in given if k not in names]
        if unknown:
            raise ConfigError(f"method.params.modality_weights: {unknown[0]!r} is not a modality of {list(names)}")
        return torch.tensor([float(given.get(n, self.modality_weight or 0.0)) for n in names])


def label_masks(model: nn.Module, protos: torch.Tensor, avail: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, M, D) substitutes: the library prototype of each sample's class, else the learned placeholder."""
    subs = protos[:, labels].transpose(0, 1)  # (B, M, D)
    ok = avail[:, labels].T.unsqueeze(-1)  # (B, M, 1)
    return torch.where(ok, subs, model.placeholders.unsqueeze(0).expand_as(subs))


def distances(emb: torch.Tensor, protos: torch.Tensor, kind: Distance) -> torch.Tensor:
    """(B, C) distance of embeddings (B, D) to prototypes (C, D)."""
    if kind == "l1":
        return torch.cdist(emb, protos, p=1)
    if kind == "l2":
        return torch.cdist(emb, protos, p=2)
    return 1.0 - F.normalize(emb, dim=-1) @ F.normalize(protos, dim=-1).T


def match_scores(emb: torch.Tensor, present: torch.Tensor, protos: torch.Tensor, avail: torch.Tensor,
                 kind: Distance) -> torch.Tensor:
    """(B, C) class scores: minus the summed distance of each available modality to the class prototype.

    Classes lacking a prototype for a modality the sample has get -inf.
    """
    score = torch.zeros(emb.shape[0], protos.shape[1], dtype=emb.dtype, device=emb.device)
    for j in range(emb.shape[1]):
        d = distances(emb[:, j], protos[j], kind)
        d = d.masked_fill(~avail[j].unsqueeze(0), float("inf"))
        score = score - torch.where(present[:, j : j + 1], d, torch.zeros_like(d))
    return score


def retrieval_masks(model: nn.Module, scores: torch.Tensor, protos: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """(B, M, D) masks of retrieval inference: every prototype of each sample's best-matching class.

    ``scores`` (B, C) from ``match_scores`` over the modalities the sample has; the model then
    classifies the sample with its missing modalities masked by these prototypes.
    """
    return label_masks(model, protos, avail, scores.argmax(dim=1))


class PmcmFL(Method):
    Params = PmcmFLParams
    uses_prototypes = True
    vectorizable = True  # batch_loss runs under vmap (masks, no indexing): the vectorized engine trains it

    # ---- state ----------------------------------------------------------------------------
    def init_state(self, spec: DataSpec, cfg: ExperimentConfig, resources: Resources = NO_RESOURCES) -> RoundState:
        state = super().init_state(spec, cfg, resources)
        state.tensors.update(empty_prototypes(proto_keys(spec.names), spec.num_classes, cfg.model.embed_dim))
        return state

    # ---- client ---------------------------------------------------------------------------
    def batch_loss(self, model: nn.Module, batch: Batch, state: RoundState, ctx: Context) -> torch.Tensor:
        p = ctx.params
        inputs, present, labels = batch.inputs, batch.present, batch.labels
        names = ctx.spec.names
        protos, avail = (t.to(present.device) for t in library(state.tensors, names))
        subs = label_masks(model, protos, avail, labels)
        tokens, fused = model.features(inputs, present, subs)
        logits = model.head(fused)
        masked = (~present).sum(dim=1)
        loss = task_calibrated_loss(logits, labels, masked, p.mask_weight, batch.weight)
        if ctx.round < p.contrast_start_round:
            return loss
        real = torch.ones_like(labels, dtype=torch.bool) if batch.weight is None else batch.weight > 0
        fp = state.tensors[f"proto/{FUSED}"].to(fused.device)
        fa = state.tensors[f"proto_count/{FUSED}"].to(fused.device) > 0
        if p.contrast == "batch":
            con, _ = paper_contrast_terms(tokens, fused, present, labels, protos, avail, fp, fa,
                                          p.modality_weight_vector(names), p.fused_weight, p.temperature, real)
            return loss + con
        if p.contrast_weight > 0:
            # The mean over the terms that apply: a modality term needs a real sample that has the modality.
            terms, count = fused.sum() * 0.0, torch.zeros((), dtype=fused.dtype, device=fused.device)
            for j in range(len(names)):
                rows = present[:, j] & real
                terms = terms + prototype_contrastive_loss(tokens[:, j], labels, protos[j], avail[j], p.temperature, rows)
                count = count + rows.any().to(fused.dtype)
            if p.contrast_fused:
                terms = terms + prototype_contrastive_loss(fused, labels, fp, fa, p.temperature, real)
                count = count + 1
            loss = loss + p.contrast_weight * terms / count.clamp_min(1.0)
        return loss

    def client_prototypes(self, state: RoundState, update: ClientUpdate, shard: MultimodalDataset, ctx: Context):
        """Class means of the locally trained model's embeddings, with counts, for the server library."""
        model = self.load_model(update.model_weights(), ctx)
        protos, avail = library(state.tensors, ctx.spec.names)
        subs = label_masks(model, protos.to(ctx.device), avail.to(ctx.device), shard.labels.to(ctx.device))
        return compute_prototypes(model, shard, ctx.spec.num_classes, subs.detach(), device=ctx.device,
                                  complete_only=ctx.params.prototype_samples == "complete")

    # ---- server ---------------------------------------------------------------------------
    def aggregate(self, state: RoundState, updates: list[ClientUpdate], ctx: Context) -> RoundState:
        new = super().aggregate(state, updates, ctx)
        keys = proto_keys(ctx.spec.names)
        if all(f"proto/{k}" in u.tensors for u in updates for k in keys):
            new.tensors.update(aggregate_prototypes([u.tensors for u in updates], keys, state.tensors))
        return new

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: nn.Module, state: RoundState, inputs, present, ctx: Context) -> torch.Tensor:
        model.eval()
        p = ctx.params
        protos, avail = (t.to(present.device) for t in library(state.tensors, ctx.spec.names))
        if bool(present.all()) or not bool(avail.any()):
            return model(inputs, present)
        emb = model.encode(inputs)
        if p.inference in ("l1", "l2", "cosine"):
            scores = match_scores(emb, present, protos, avail, p.inference)
            logits = model(inputs, present)
            incomplete = ~present.all(dim=1, keepdim=True)
            return torch.where(incomplete, scores, logits)
        scores = match_scores(emb, present, protos, avail, p.match_distance)
        if p.inference == "retrieval":
            subs = retrieval_masks(model, scores, protos, avail)
        else:
            scale = scores.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) if p.match_distance != "cosine" else 1.0
            weights = torch.softmax(scores / scale / p.match_temperature, dim=1)  # (B, C)
            weights = torch.nan_to_num(weights)
            subs = torch.einsum("bc,mcd->bmd", weights, protos)
        return model.head(model.fuse(model.substitute(emb, present, subs)))

