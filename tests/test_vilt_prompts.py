"""Prompt-tuned frozen ViLT on a tiny random config: FED-PRIME pools and FedAvg-P missing-aware prompts."""

from __future__ import annotations

import torch

from mmfl.models.backbones import BackboneConfig
from mmfl.models.vilt_prompts import (
    COMPLETE, MISSING_IMAGE, MISSING_TEXT, MissingAwareVilt, PrimeVilt, PromptPool, batchwise_top_k,
)

NAMES = ("image", "text")
BACKBONE = BackboneConfig(hidden=32, layers=2, heads=2, intermediate=64, image_size=32, patch_size=8, max_text_len=12)


def batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g)
    text = torch.randint(1000, 2000, (n, 12), generator=g)
    text[:, 0] = 101
    text[:, 8:] = 0
    present = torch.ones(n, 2, dtype=torch.bool)
    present[1::3, 1] = False  # text missing
    present[2::3, 0] = False  # image missing
    return {"image": images, "text": text}, present


def test_batchwise_top_k_serves_the_most_chosen_prompts():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.9, 0.1, 0.8, 0.0], [0.7, 0.1, 0.9, 0.0]])
    # Row choices (k=2): {0,1}, {0,2}, {2,0}: prompt 0 three times, prompt 2 twice.
    assert batchwise_top_k(sim, 2).tolist() == [0, 2]
    assert batchwise_top_k(sim, 9).tolist() == [0, 1, 2, 3]  # k capped at the pool size
    assert batchwise_top_k(torch.zeros(2, 3), 2).tolist() == [0, 1]  # ties: lower id first


def test_prompt_pool_prompt_is_its_own_key_and_regulariser_pulls_together():
    torch.manual_seed(0)
    pool = PromptPool(size=5, length=1, hidden=8, top_k=2, patch_size=4)
    pooled = torch.randn(4, 8)
    ids, tokens, reg = pool.retrieve(pooled)
    assert ids.shape == (2,) and tokens.shape == (2, 8)
    assert torch.equal(tokens, pool.prompts[ids].flatten(0, 1))
    # The regulariser is 1 - cos(query, prompt): a gradient step on it raises the similarity.
    opt = torch.optim.SGD(pool.parameters(), lr=0.1)
    before = float(reg.detach())
    reg.backward()
    opt.step()
    after = float(pool.retrieve(pooled)[2].detach())
    assert after < before
    assert pool.query.bias is None
    pool.resize(7)
    assert pool.prompts.shape == (7, 1, 8)


def test_missing_inputs_follow_the_official_conventions():
    torch.manual_seed(0)
    model = PrimeVilt(4, NAMES, "image", "text", (12,), BACKBONE, pool_size=6, top_k=2, prompt_length=1)
    inputs, present = batch()
    feats = model.frozen_features(inputs, present)
    assert feats["missing_type"].tolist() == [COMPLETE, MISSING_TEXT, MISSING_IMAGE] * 2
    # An absent image is an all-ones image, whatever the zeroed input held.
    ones = {"image": torch.ones(6, 3, 32, 32), "text": inputs["text"]}
    ref = model.frozen_features(ones, torch.ones(6, 2, dtype=torch.bool))
    n_text = 12
    assert torch.allclose(feats["embeds"][2, n_text:], ref["embeds"][2, n_text:])
    # An absent text is the empty string [CLS] [SEP]: two attended text positions.
    assert feats["mask"][1, :n_text].tolist() == [1, 1] + [0] * (n_text - 2)


def test_prime_vilt_batchwise_prompts_and_head():
    torch.manual_seed(0)
    model = PrimeVilt(4, NAMES, "image", "text", (12,), BACKBONE, pool_size=6, top_k=2, prompt_length=1)
    inputs, present = batch()
    feats = model.frozen_features(inputs, present)
    logits, reg, used = model.forward_cached(feats["embeds"], feats["mask"])
    assert logits.shape == (6, 4) and used.shape == (2,)
    assert reg.item() > 0
    # Trainable: prompts, query projections and head; the backbone is not in the state dict.
    keys = set(model.state_dict())
    assert {"intra.prompts", "inter.prompts", "intra.query.weight", "inter.query.weight", "head.dense.weight"} <= keys
    assert not any(k.startswith("backbone") for k in keys)
    # The inter pool follows the server: a resized pool loads a state of the new size.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["inter.prompts"] = torch.randn(9, 1, 32)
    model.inter.resize(9)
    model.load_state_dict(state)
    assert model.forward_cached(feats["embeds"], feats["mask"])[0].shape == (6, 4)


def test_fedavg_p_prompt_set_follows_the_samples_missing_type():
    torch.manual_seed(0)
    model = MissingAwareVilt(4, NAMES, "image", "text", (12,), BACKBONE, prompt_length=4, prompt_layers=6)
    assert model.prompts.shape == (3, 2, 4, 32)  # 3 missing types x prompted layers (capped at 2) x tokens
    inputs, present = batch()
    feats = model.frozen_features(inputs, present)
    types = feats["missing_type"]
    base = model.forward_cached(feats["embeds"], feats["mask"], types).detach()
    for kind in (COMPLETE, MISSING_TEXT, MISSING_IMAGE):
        with torch.no_grad():
            saved = model.prompts[kind].clone()
            model.prompts[kind] += torch.randn(saved.shape, generator=torch.Generator().manual_seed(kind))
        out = model.forward_cached(feats["embeds"], feats["mask"], types).detach()
        with torch.no_grad():
            model.prompts[kind] = saved
        changed = (out - base).abs().amax(dim=1) > 1e-6
        # Changing one type's prompt set changes exactly the samples of that type.
        assert changed.tolist() == (types == kind).tolist(), kind
    # Gradients reach only the sets of the types present in the batch.
    only_complete = types == COMPLETE
    loss = model.forward_cached(feats["embeds"][only_complete], feats["mask"][only_complete], types[only_complete]).sum()
    loss.backward()
    grad = model.prompts.grad.abs().flatten(1).sum(1)
    assert grad[COMPLETE] > 0 and grad[MISSING_TEXT] == 0 and grad[MISSING_IMAGE] == 0


def test_padding_rows_neither_vote_nor_enter_the_regulariser():
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.9, 0.1, 0.8, 0.0], [0.7, 0.1, 0.9, 0.0]])
    assert batchwise_top_k(sim, 2, torch.tensor([1.0, 1.0, 0.0])).tolist() == [0, 1]  # row 2's vote for 2 is gone
    torch.manual_seed(0)
    model = PrimeVilt(4, NAMES, "image", "text", (12,), BACKBONE, pool_size=6, top_k=2, prompt_length=1)
    real = model.frozen_features(*batch(4, seed=0))
    # Six padding rows that, were they counted, would outvote the four real ones.
    embeds = torch.cat([real["embeds"], -real["embeds"][:1].repeat(6, 1, 1)])
    mask = torch.cat([real["mask"], real["mask"][:1].repeat(6, 1)])
    weight = torch.tensor([1.0] * 4 + [0.0] * 6)
    logits, reg, ids = model.forward_cached(real["embeds"], real["mask"])
    assert not torch.equal(model.forward_cached(embeds, mask)[2], ids)
    p_logits, p_reg, p_ids = model.forward_cached(embeds, mask, weight)
    assert torch.equal(p_ids, ids)
    torch.testing.assert_close(p_reg, reg)
    torch.testing.assert_close(p_logits[:4], logits)
