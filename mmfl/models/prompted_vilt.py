"""Frozen ViLT with learnable prompt pools, input-adaptive retrieval and a classification head.

Only the prompts, their keys, the query map and the head are parameters of this module (its
``state_dict`` is exactly what travels); the ViLT backbone is held outside the module registry.

The forward pass has two halves:
- ``frozen_features`` (no gradients, cached once per sample): ViLT's input embeddings of the
  image+text pair and the pooled output of the unprompted backbone, used as the retrieval query
  input (as in L2P-style retrieval, the query comes from the frozen model);
- ``forward_cached``: pick the top-k prompts of each pool by cosine similarity between the
  learned query q(x) and the learned keys k(p), prepend them to the cached embeddings, run the
  frozen transformer layers, and classify [mean of the input tokens' outputs, mean of the
  prompt tokens' outputs] (mean pooling keeps the inputs' information even when the backbone is
  a random-init stand-in; ViLT's CLS pooler would need pretrained weights to be informative).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmfl.models.backbones import BackboneConfig, frozen_projection, load_vilt, prepare_images, text_attention

CLS_ID = 101  # [CLS] of the BERT uncased vocabulary used by ViLT


class PromptedVilt(nn.Module):
    def __init__(
        self, num_classes: int, image_name: str, text_name: str, text_shape: tuple[int, ...],
        backbone: BackboneConfig, pool_size: int, top_k: int, prompt_length: int, pools: bool = True,
        store=None,
    ):
        super().__init__()
        vilt = load_vilt(backbone, store)
        object.__setattr__(self, "backbone", vilt)  # not a submodule: never in state_dict
        self.backbone_cfg = backbone
        self.image_name, self.text_name = image_name, text_name
        self.pools = pools
        self.top_k = top_k
        h = vilt.config.hidden_size
        self.image_size = vilt.config.image_size
        n = pool_size if pools else top_k
        self.inter_prompts = nn.Parameter(torch.randn(n, prompt_length, h) * 0.02)
        self.intra_prompts = nn.Parameter(torch.randn(n, prompt_length, h) * 0.02)
        if pools:
            self.inter_keys = nn.Parameter(torch.rand(n, h) * 2 - 1)
            self.intra_keys = nn.Parameter(torch.rand(n, h) * 2 - 1)
            self.query = nn.Linear(h, h)
        self.head = nn.Linear(2 * h, num_classes)
        if len(text_shape) == 1:  # used only when the text arrives as float features
            self.register_buffer("text_proj", frozen_projection(text_shape[0], h, backbone.seed + 1), persistent=False)

    # ---- frozen half (cacheable) ----------------------------------------------------------
    @torch.no_grad()
    def frozen_features(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        vilt = self.backbone
        images = prepare_images(inputs[self.image_name], self.image_size)
        b = images.shape[0]
        text = inputs[self.text_name]
        if text.dtype.is_floating_point:
            # Precomputed sentence features: [CLS] embedding followed by one projected feature token.
            cls = vilt.embeddings.text_embeddings.word_embeddings.weight[CLS_ID].expand(b, 1, -1)
            embeds = torch.cat([cls, (text.float() @ self.text_proj).unsqueeze(1)], dim=1)
            ids, attn = None, torch.ones(b, 2, dtype=torch.long)
        else:
            ids = text.long()[:, : vilt.config.max_position_embeddings]
            embeds, attn = None, text_attention(ids)
        pixel_mask = torch.ones(b, self.image_size, self.image_size, dtype=torch.long)
        with torch.random.fork_rng(devices=[]):  # ViLT shuffles patch order; output does not depend on it
            torch.manual_seed(0)
            emb, mask = vilt.embeddings(ids, attn, None, images, pixel_mask, embeds, None, image_token_type_idx=1)
        pooled = self._encode(emb, mask)[1]
        return {"embeds": emb, "mask": mask, "query": pooled}

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        vilt = self.backbone
        ext = create_bidirectional_mask(config=vilt.config, inputs_embeds=x, attention_mask=mask)
        h = vilt.layernorm(vilt.encoder(x, attention_mask=ext)[0])
        return h, vilt.pooler(h[:, skip:])

    # ---- trainable half -----------------------------------------------------------------
    def _retrieve(self, q: torch.Tensor, prompts: torch.Tensor, keys: torch.Tensor):
        sim = q @ F.normalize(keys, dim=-1).T  # (B, pool)
        top = sim.topk(self.top_k, dim=1)
        chosen = prompts[top.indices].flatten(1, 2)  # (B, k * length, H)
        reg = (1.0 - top.values).sum(dim=1).mean()  # pulls selected keys towards the query
        return chosen, reg, top.indices

    def forward_cached(self, embeds: torch.Tensor, mask: torch.Tensor, query: torch.Tensor):
        """(logits, retrieval regulariser, indices of the inter prompts used per sample or None)."""
        b = embeds.shape[0]
        if self.pools:
            q = F.normalize(self.query(query), dim=-1)
            inter, r1, used = self._retrieve(q, self.inter_prompts, self.inter_keys)
            intra, r2, _ = self._retrieve(q, self.intra_prompts, self.intra_keys)
            reg = r1 + r2
        else:
            inter = self.inter_prompts.flatten(0, 1).expand(b, -1, -1)
            intra = self.intra_prompts.flatten(0, 1).expand(b, -1, -1)
            reg, used = embeds.new_zeros(()), None
        p = inter.shape[1] + intra.shape[1]
        x = torch.cat([inter, intra, embeds], dim=1)
        m = torch.cat([mask.new_ones(b, p), mask], dim=1)
        h, _ = self._encode(x, m, skip=p)
        w = mask.unsqueeze(-1).to(h.dtype)
        data = (h[:, p:] * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        logits = self.head(torch.cat([data, h[:, :p].mean(dim=1)], dim=-1))
        return logits, reg, used
