"""Prompt-tuned frozen ViLT: FED-PRIME's dual prompt pools and the missing-aware prompts of FedAvg-P.

Only prompts, query projections and the head are parameters of these modules (their
``state_dict`` is what a client trains); the ViLT backbone is held outside the module registry.

Shared conventions (as in the FED-PRIME code):

* the frozen half is ViLT's input embeddings of the image+text pair (text embeddings followed by
  patch embeddings, with modality-type embeddings), computed once per sample and cacheable; an
  absent text is the empty string (``[CLS] [SEP]``; for precomputed sentence features, ``[CLS]``
  alone), an absent image is an all-ones image;
* the head is a pooler (dense + tanh on one token of the last layer's output, after ViLT's final
  LayerNorm) followed by an MLP classifier (H -> 2H -> LayerNorm -> GELU -> classes).

FED-PRIME (``PrimeVilt``): two pools of one-token prompts (intra-client and inter-client). The
prompt is its own key; the query is a per-pool linear projection (no bias, uniform(-1, 1) init)
of the max-pooled input embeddings. Retrieval is batch-wise: every sample ranks the pool by cosine
similarity, and the ``top_k`` prompts chosen most often in the batch serve every sample of the
batch. The retrieved intra then inter prompts are prepended before the first layer; the pooler reads
the first position (a prompt token). The retrieval regulariser is ``sum_k (1 - cos(q(x), p_k))``
averaged over the batch: it pulls the chosen prompts and the query together (the paper's sign).

FedAvg-P (``MissingAwareVilt``): missing-aware prompts, one prompt set per missing type
(complete / text missing / image missing), chosen per sample by its missing type; each set holds
``prompt_length`` tokens for each prompted layer, prepended at the input of that layer (the
sequence grows layer by layer); the pooler reads the text ``[CLS]`` after all prompt tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from mmfl.models.masked import masked_mean
from mmfl.models.backbones import BackboneConfig, frozen_projection, load_vilt, prepare_images, text_attention

CLS_ID, SEP_ID = 101, 102  # BERT uncased vocabulary used by ViLT
COMPLETE, MISSING_TEXT, MISSING_IMAGE = 0, 1, 2  # FedAvg-P's missing types, as in the official code


class PoolerHead(nn.Module):
    """Pooler (dense + tanh on one token) and MLP classifier (H -> 2H -> LN -> GELU -> C)."""

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.classifier = nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, hidden: torch.Tensor, index: int = 0) -> torch.Tensor:
        return self.classifier(torch.tanh(self.dense(hidden[:, index])))


def batchwise_top_k(similarity: torch.Tensor, k: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The k prompt ids chosen most often when every row picks its own top-k (ties: lower id first).

    ``weight`` (B,) 0/1 leaves padding rows out of the vote. Tensor operations only (vmap-safe):
    the votes are counted exactly, so a stable descending sort breaks ties by the lower id.
    """
    n = similarity.shape[1]
    k = min(k, n)
    picks = similarity.topk(k, dim=1).indices  # (B, k)
    votes = (picks.unsqueeze(-1) == torch.arange(n, device=similarity.device)).sum(1).to(similarity.dtype)  # (B, n)
    if weight is not None:
        votes = votes * weight.to(votes.dtype).unsqueeze(-1)
    return torch.sort(votes.sum(0), descending=True, stable=True).indices[:k]


class PromptPool(nn.Module):
    """A pool of prompts that are their own keys, with this pool's query projection."""

    def __init__(self, size: int, length: int, hidden: int, top_k: int, patch_size: int):
        super().__init__()
        self.top_k = top_k
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + hidden))  # official uniform init
        self.prompts = nn.Parameter(torch.empty(size, length, hidden).uniform_(-bound, bound))
        self.query = nn.Linear(hidden, hidden, bias=False)
        nn.init.uniform_(self.query.weight, -1.0, 1.0)

    def resize(self, size: int) -> None:
        """New pool size (the inter pool follows the server's matching); values come from a state dict."""
        if size != self.prompts.shape[0]:
            self.prompts = nn.Parameter(self.prompts.new_zeros(size, *self.prompts.shape[1:]))

    def retrieve(self, pooled: torch.Tensor, weight: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen ids (k,), chosen prompt tokens (k * length, H), regulariser) for max-pooled inputs (B, H).

        ``weight`` (B,) 0/1: rows of weight 0 (padding) neither vote nor count in the regulariser.
        """
        keys = F.normalize(self.prompts.mean(dim=1), dim=-1)
        q = F.normalize(self.query(pooled), dim=-1)
        sim = q @ keys.T
        ids = batchwise_top_k(sim.detach(), self.top_k, weight)
        reg = masked_mean((1.0 - sim.index_select(1, ids)).sum(dim=1), weight)
        return ids, self.prompts.index_select(0, ids).flatten(0, 1), reg


class _FrozenVilt(nn.Module):
    """Frozen ViLT input embeddings (cacheable) and the frozen layers, shared by both prompt models."""

    def __init__(self, num_classes: int, names: tuple[str, ...], image_name: str, text_name: str,
                 text_shape: tuple[int, ...], backbone: BackboneConfig, store=None):
        super().__init__()
        self.names = tuple(names)
        vilt = load_vilt(backbone, store)
        object.__setattr__(self, "backbone", vilt)  # not a submodule: never in state_dict
        self.backbone_cfg = backbone
        self.image_name, self.text_name = image_name, text_name
        self.hidden = vilt.config.hidden_size
        self.image_size = vilt.config.image_size
        self.patch_size = vilt.config.patch_size
        self.head = PoolerHead(self.hidden, num_classes)
        if len(text_shape) == 1:  # used only when the text arrives as float features
            self.register_buffer("text_proj", frozen_projection(text_shape[0], self.hidden, backbone.seed + 1),
                                 persistent=False)

    @torch.no_grad()
    def frozen_features(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        vilt = self.backbone
        has_image = present[:, self.names.index(self.image_name)].bool()
        has_text = present[:, self.names.index(self.text_name)].bool()
        images = prepare_images(inputs[self.image_name], self.image_size)
        images = torch.where(has_image.view(-1, 1, 1, 1), images, torch.ones((), dtype=images.dtype))
        b = images.shape[0]
        text = inputs[self.text_name]
        if text.dtype.is_floating_point:
            # Precomputed sentence features: [CLS] embedding followed by one projected feature token.
            cls = vilt.embeddings.text_embeddings.word_embeddings.weight[CLS_ID].expand(b, 1, -1)
            embeds = torch.cat([cls, (text.float() @ self.text_proj).unsqueeze(1)], dim=1)
            ids, attn = None, torch.stack([torch.ones(b, dtype=torch.long), has_text.long()], dim=1)
        else:
            ids = text.long()[:, : vilt.config.max_position_embeddings].clone()
            empty = torch.zeros_like(ids[0])
            empty[0] = CLS_ID
            empty[1] = SEP_ID
            ids = torch.where(has_text.view(-1, 1), ids, empty)
            embeds, attn = None, text_attention(ids)
        pixel_mask = torch.ones(b, self.image_size, self.image_size, dtype=torch.long)
        with torch.random.fork_rng(devices=[]):  # ViLT shuffles patch order; output does not depend on it
            torch.manual_seed(0)
            emb, mask = vilt.embeddings(ids, attn, None, images, pixel_mask, embeds, None, image_token_type_idx=1)
        missing = torch.full((b,), COMPLETE, dtype=torch.long)
        missing[~has_text] = MISSING_TEXT
        missing[~has_image] = MISSING_IMAGE
        return {"embeds": emb, "mask": mask, "missing_type": missing}

    def _mask(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ViLT's additive attention mask of a (B, L) padding mask: 0 where attended, the dtype's
        minimum elsewhere (transformers' bidirectional eager mask, broadcast over the queries).

        Built with tensor operations only, so that it runs per client under ``torch.func.vmap``
        (transformers' own helper skips an all-attended mask with a data-dependent branch; adding
        zeros instead gives the same scores).
        """
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.where(mask.bool()[:, None, None, :], zero, torch.finfo(x.dtype).min)


class PrimeVilt(_FrozenVilt):
    """FED-PRIME: intra and inter prompt pools on a frozen ViLT, pooler + MLP head."""

    def __init__(self, num_classes: int, names: tuple[str, ...], image_name: str, text_name: str,
                 text_shape: tuple[int, ...], backbone: BackboneConfig, pool_size: int, top_k: int,
                 prompt_length: int, store=None):
        super().__init__(num_classes, names, image_name, text_name, text_shape, backbone, store)
        self.intra = PromptPool(pool_size, prompt_length, self.hidden, top_k, self.patch_size)
        self.inter = PromptPool(pool_size, prompt_length, self.hidden, top_k, self.patch_size)

    def forward_cached(self, embeds: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None):
        """(logits, retrieval regulariser, ids of the inter prompts this batch used).

        ``weight`` (B,) 0/1 marks the real rows of a padded batch: only they choose the prompts
        and enter the regulariser (each row's logits depend on its own inputs and the prompts).
        """
        b = embeds.shape[0]
        pooled = embeds.max(dim=1).values
        _, intra, r1 = self.intra.retrieve(pooled, weight)
        inter_ids, inter, r2 = self.inter.retrieve(pooled, weight)
        prompts = torch.cat([intra, inter]).unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([prompts, embeds], dim=1)
        m = torch.cat([mask.new_ones(b, prompts.shape[1]), mask], dim=1)
        vilt = self.backbone
        h = vilt.layernorm(vilt.encoder(x, attention_mask=self._mask(x, m))[0])
        return self.head(h, 0), r1 + r2, inter_ids


class MissingAwareVilt(_FrozenVilt):
    """FedAvg-P: one prompt set per missing type, chosen per sample, prepended at each prompted layer."""

    def __init__(self, num_classes: int, names: tuple[str, ...], image_name: str, text_name: str,
                 text_shape: tuple[int, ...], backbone: BackboneConfig, prompt_length: int, prompt_layers: int,
                 store=None):
        super().__init__(num_classes, names, image_name, text_name, text_shape, backbone, store)
        self.layers = min(prompt_layers, self.backbone.config.num_hidden_layers)
        prompts = torch.zeros(3, self.layers, prompt_length, self.hidden)
        # Official init: zeros, with one marker token of ones per type (complete 0, text missing 2, image missing 1).
        for kind, token in ((COMPLETE, 0), (MISSING_TEXT, 2), (MISSING_IMAGE, 1)):
            prompts[kind, :, min(token, prompt_length - 1)] = 1.0
        self.prompts = nn.Parameter(prompts)

    def forward_cached(self, embeds: torch.Tensor, mask: torch.Tensor, missing_type: torch.Tensor) -> torch.Tensor:
        b = embeds.shape[0]
        chosen = self.prompts[missing_type]  # (B, layers, length, H): each sample's own set
        x, m = embeds, mask
        vilt = self.backbone
        for i, layer in enumerate(vilt.encoder.layer):
            if i < self.layers:
                x = torch.cat([chosen[:, i], x], dim=1)
                m = torch.cat([m.new_ones(b, chosen.shape[2]), m], dim=1)
            x = layer(x, self._mask(x, m))[0]
        h = vilt.layernorm(x)
        return self.head(h, self.layers * chosen.shape[2])
