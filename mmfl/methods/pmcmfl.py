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

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from mmfl.config import ExperimentConfig
from mmfl.data.dataset import DataSpec, MultimodalDataset
from mmfl.state import ClientUpdate, RoundState
from mmfl.methods.base import NO_RESOURCES, Batch, Context, Method, Resources
from mmfl.methods.pmcmfl_losses import prototype_contrastive_loss, task_calibrated_loss
from mmfl.methods.prototypes import (
    FUSED, aggregate_prototypes, compute_prototypes, empty_prototypes, library, proto_keys,
)

Inference = Literal["classifier", "retrieval", "l1", "l2", "cosine"]
Distance = Literal["l1", "l2", "cosine"]


class PmcmFLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contrast_weight: float = Field(
        1.0, ge=0, description="Weight of the proximal prototype contrastive loss (not given in the summary; 1.0 chosen)")
    temperature: float = Field(
        0.5, gt=0, description="Temperature of the prototype contrast (not given in the summary; 0.5 chosen)")
    contrast_fused: bool = Field(True, description="Also contrast the fused representation with the fused prototypes")
    mask_weight: float = Field(
        0.5, ge=0, le=1,
        description="Task calibration: weight factor per prototype-masked modality of a sample (chosen default 0.5)")
    inference: Inference = Field(
        "classifier",
        description=("Uni-modal inference: l1 / l2 / cosine = nearest class prototype of the available modalities "
                     "(model-free); retrieval = mask the missing modality with the prototype of the nearest class and "
                     "classify; classifier = mask with the similarity-weighted mixture of prototypes and classify"))
    match_distance: Distance = Field("cosine", description="Distance used by retrieval / classifier matching")
    match_temperature: float = Field(
        0.1, gt=0, description="Softmax temperature of the classifier option's prototype mixture (chosen default)")


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


class PmcmFL(Method):
    Params = PmcmFLParams
    uses_prototypes = True

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
        loss = task_calibrated_loss(logits, labels, masked, p.mask_weight)
        if p.contrast_weight > 0:
            con = []
            for j in range(len(names)):
                rows = present[:, j]
                if bool(rows.any()):
                    con.append(prototype_contrastive_loss(tokens[rows, j], labels[rows], protos[j], avail[j], p.temperature))
            if p.contrast_fused:
                fp = state.tensors[f"proto/{FUSED}"].to(fused.device)
                fa = state.tensors[f"proto_count/{FUSED}"].to(fused.device) > 0
                con.append(prototype_contrastive_loss(fused, labels, fp, fa, p.temperature))
            if con:
                loss = loss + p.contrast_weight * torch.stack(con).mean()
        return loss

    def client_prototypes(self, state: RoundState, update: ClientUpdate, shard: MultimodalDataset, ctx: Context):
        """Class means of the locally trained model's embeddings, with counts, for the server library."""
        model = self.load_model(update.model_weights(), ctx)
        protos, avail = library(state.tensors, ctx.spec.names)
        subs = label_masks(model, protos.to(ctx.device), avail.to(ctx.device), shard.labels.to(ctx.device))
        return compute_prototypes(model, shard, ctx.spec.num_classes, subs.detach(), device=ctx.device)

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
            nearest = scores.argmax(dim=1)
            subs = label_masks(model, protos, avail, nearest)
        else:
            scale = scores.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) if p.match_distance != "cosine" else 1.0
            weights = torch.softmax(scores / scale / p.match_temperature, dim=1)  # (B, C)
            weights = torch.nan_to_num(weights)
            subs = torch.einsum("bc,mcd->bmd", weights, protos)
        return model.head(model.fuse(model.substitute(emb, present, subs)))

