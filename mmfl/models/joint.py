"""FedMVP's trainable part: input projections, feature-space completion, joint encoder, head.

Frozen per-modality features f_m (from ``FrozenEncoders``, cached) are projected to tokens
z_m = P_m(LayerNorm(f_m)). A missing modality m is completed in feature space by a learned
translator from the mean of the sample's present tokens, z^_m = G_m(mean_{j present} z_j) (the
offline completion; a generator that produces the missing raw modality can replace it, see
``mmfl.models.generative_completion``). A small transformer over [CLS, z_1..z_M] (+ modality embeddings)
gives the joint representation h (its CLS output) and one contextual output token per modality;
a linear head classifies h. ``to_frozen[n]`` maps a joint-space vector into modality n's frozen
feature space, for the knowledge-transfer losses (``mmfl.models.transfer_losses``). The
translators exist only where a modality can still be missing after completion (``translator``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class JointModel(nn.Module):
    def __init__(self, names: tuple[str, ...], feature_dims: dict[str, int], num_classes: int,
                 dim: int = 64, layers: int = 1, heads: int = 2, translator: bool = True):
        super().__init__()
        self.names = tuple(names)
        self.proj = nn.ModuleDict({n: nn.Sequential(nn.LayerNorm(feature_dims[n]), nn.Linear(feature_dims[n], dim))
                                   for n in self.names})
        self.complete = nn.ModuleDict({n: nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
                                       for n in self.names}) if translator else None
        self.to_frozen = nn.ModuleDict({n: nn.Linear(dim, feature_dims[n]) for n in self.names})
        self.modality_embed = nn.Parameter(torch.zeros(len(self.names), dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, M, dim) projected tokens of the frozen features (absent rows are meaningless)."""
        return torch.stack([self.proj[n](feats[f"f/{n}"]) for n in self.names], dim=1)

    def completed(self, z: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Tokens of absent modalities replaced by their translation from the present ones.

        Without translators every modality must be present (``check_complete``; not checked here,
        so that this runs per client under ``torch.func.vmap``).
        """
        if self.complete is None:
            return z
        w = present.float().unsqueeze(-1)
        context = (z * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, dim)
        guess = torch.stack([self.complete[n](context) for n in self.names], dim=1)
        return torch.where(present.unsqueeze(-1), z, guess)

    def check_complete(self, present: torch.Tensor) -> None:
        """A model without translators cannot complete: refuse inputs with a missing modality."""
        if self.complete is None and not bool(present.all()):
            raise ValueError("a modality is missing but this joint model has no translator (generative completion)")

    def completion_loss(self, z: torch.Tensor, present: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Train each translator on samples where its modality and another one are present.

        ``weight`` (B,) 0/1 leaves padding rows out. Masks instead of row selection (vmap-safe).
        """
        if self.complete is None:
            return z.new_zeros(())
        w = present.to(z.dtype).unsqueeze(-1)
        live = present if weight is None else present & (weight > 0).unsqueeze(-1)
        terms, used = [], []
        for j, n in enumerate(self.names):
            keep = torch.ones(len(self.names), 1, dtype=z.dtype, device=z.device)
            keep[j] = 0
            others = w * keep  # (B, M, 1): the sample's present modalities other than j
            ok = (live[:, j] & (others.squeeze(-1).sum(1) > 0)).to(z.dtype)
            context = (z * others).sum(1) / others.sum(1).clamp_min(1.0)
            cos = F.cosine_similarity(self.complete[n](context), z[:, j].detach(), dim=-1)
            terms.append(1 - (cos * ok).sum() / ok.sum().clamp_min(1.0))
            used.append((ok.sum() > 0).to(z.dtype))
        u = torch.stack(used)
        return (torch.stack(terms) * u).sum() / u.sum().clamp_min(1.0)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(joint representation (B, dim), contextual output tokens (B, M, dim))."""
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens + self.modality_embed], dim=1)
        out = self.encoder(x)
        return out[:, 0], out[:, 1:]

    def joint(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encode(tokens)[0]

    def project(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Joint-space vectors into the frozen feature space of modality j."""
        return self.to_frozen[self.names[j]](x)

    def forward(self, feats: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        self.check_complete(present)
        return self.head(self.joint(self.completed(self.tokens(feats), present)))
