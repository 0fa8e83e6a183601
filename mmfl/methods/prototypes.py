"""Class prototypes: per-class mean embeddings per modality and of the fused representation.

Shared by the prototype methods (PmcmFL uses them as masks and contrast targets, FlexMod as a
measure of encoder quality). A client computes means plus counts on its shard; the server
averages them weighted by counts, so the global prototype equals the mean over the union of
the clients' samples without any client sending samples. Tensors travel as

    proto/<modality>  (C, D) mean embedding      proto_count/<modality>  (C,) samples used
    proto/fused       (C, D)                      proto_count/fused       (C,)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mmfl.data.dataset import MultimodalDataset

FUSED = "fused"


def proto_keys(names: Sequence[str]) -> list[str]:
    """Entries of the prototype library: every modality and the fused representation."""
    return [*names, FUSED]


@torch.no_grad()
def compute_prototypes(
    model: nn.Module, shard: MultimodalDataset, num_classes: int, substitutes: torch.Tensor | None = None,
    batch_size: int = 256, device: str = "cpu", complete_only: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-class means and counts of each modality's embedding (only where present) and of the fused one.

    The fused prototype uses complete samples only when there are any for a class, so a
    substitute (placeholder or prototype) never feeds back into the prototype it stands for;
    classes seen only incompletely fall back to the fused representation after substitution.
    With ``complete_only`` every prototype comes from the complete samples alone (as in the
    PmcmFL code) and a class without complete samples gets none (count 0).
    """
    model.eval()
    names = list(shard.names)
    dim = model.head.in_features
    sums = {k: torch.zeros(num_classes, dim, dtype=torch.float64) for k in proto_keys(names)}
    counts = {k: torch.zeros(num_classes, dtype=torch.float64) for k in proto_keys(names)}
    fused_any = torch.zeros(num_classes, dim, dtype=torch.float64)
    fused_any_n = torch.zeros(num_classes, dtype=torch.float64)
    for start in range(0, len(shard), batch_size):
        sl = slice(start, start + batch_size)
        inputs = {k: v[sl].to(device) for k, v in shard.inputs.items()}
        present = shard.present[sl].to(device)
        labels = shard.labels[sl]
        onehot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64)  # (B, C)
        raw = model.encode(inputs).double().cpu()  # (B, M, D)
        subs = None if substitutes is None else substitutes[sl].to(device)
        fused = model.features(inputs, present, subs)[1].double().cpu()
        pres = present.cpu().to(torch.float64)
        complete = pres.prod(dim=1, keepdim=True)
        for j, name in enumerate(names):
            w = onehot * (complete if complete_only else pres[:, j : j + 1])
            sums[name] += w.T @ raw[:, j]
            counts[name] += w.sum(0)
        sums[FUSED] += (onehot * complete).T @ fused
        counts[FUSED] += (onehot * complete).sum(0)
        fused_any += onehot.T @ fused
        fused_any_n += onehot.sum(0)
    fallback = (counts[FUSED] == 0) & (fused_any_n > 0) & (not complete_only)
    sums[FUSED][fallback] = fused_any[fallback]
    counts[FUSED][fallback] = fused_any_n[fallback]
    out = {}
    for key in proto_keys(names):
        mean = sums[key] / counts[key].clamp(min=1).unsqueeze(1)
        out[f"proto/{key}"] = mean.float()
        out[f"proto_count/{key}"] = counts[key].float()
    return out


def aggregate_prototypes(
    uploads: Sequence[dict[str, torch.Tensor]], keys: Sequence[str], previous: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Count-weighted mean of client prototypes; a class no client saw keeps its previous prototype.

    The count of a kept class is carried over too, so "has this class a prototype" stays
    answerable from the counts alone.
    """
    previous = previous or {}
    out = {}
    for key in keys:
        means = torch.stack([u[f"proto/{key}"].double() for u in uploads])  # (K, C, D)
        cnts = torch.stack([u[f"proto_count/{key}"].double() for u in uploads])  # (K, C)
        total = cnts.sum(0)
        mean = (cnts.unsqueeze(-1) * means).sum(0) / total.clamp(min=1).unsqueeze(-1)
        prev_mean = previous.get(f"proto/{key}")
        prev_cnt = previous.get(f"proto_count/{key}")
        if prev_mean is not None and prev_cnt is not None:
            keep = total == 0
            mean[keep] = prev_mean.double()[keep]
            total = torch.where(keep, prev_cnt.double(), total)
        out[f"proto/{key}"] = mean.float()
        out[f"proto_count/{key}"] = total.float()
    return out


def empty_prototypes(keys: Sequence[str], num_classes: int, dim: int) -> dict[str, torch.Tensor]:
    """The library before round 1: zeros with zero counts (no class has a prototype yet)."""
    out = {}
    for key in keys:
        out[f"proto/{key}"] = torch.zeros(num_classes, dim)
        out[f"proto_count/{key}"] = torch.zeros(num_classes)
    return out


def library(tensors: dict[str, torch.Tensor], names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prototypes (M, C, D), available (M, C) bool) of the modalities, in model order."""
    protos = torch.stack([tensors[f"proto/{n}"] for n in names])
    avail = torch.stack([tensors[f"proto_count/{n}"] > 0 for n in names])
    return protos, avail
