"""Encoders, fusion and the explicit missing-modality path."""

import pytest
import torch
from torch.nn import functional as F

from mmfl.config import ModelConfig
from mmfl.data.dataset import DataSpec, ModalitySpec
from mmfl.models import MultimodalNet

SPEC = DataSpec((ModalitySpec("img", (1, 16, 15), "image"), ModalitySpec("vec", (12,), "vector"),
                 ModalitySpec("ts", (3, 20), "series")), 5)


def _batch(n=6):
    g = torch.Generator().manual_seed(0)
    return {"img": torch.randn(n, 1, 16, 15, generator=g), "vec": torch.randn(n, 12, generator=g),
            "ts": torch.randn(n, 3, 20, generator=g)}


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_forward_shapes_for_every_encoder_kind(fusion):
    net = MultimodalNet(SPEC, ModelConfig(embed_dim=8, hidden=16, fusion=fusion))
    x = _batch()
    present = torch.ones(6, 3, dtype=torch.bool)
    assert net(x, present).shape == (6, 5)
    tokens, fused = net.features(x, present)
    assert tokens.shape == (6, 3, 8) and fused.shape == (6, 8)


@pytest.mark.parametrize("missing", ["mask", "zero"])
def test_absent_inputs_cannot_influence_the_output(missing):
    net = MultimodalNet(SPEC, ModelConfig(embed_dim=8, hidden=16), missing=missing)
    x = _batch()
    present = torch.tensor([[True, False, True]] * 6)
    noisy = dict(x, vec=x["vec"] * 100 + 7)
    assert torch.allclose(net(x, present), net(noisy, present))


def test_mask_path_uses_learned_placeholder_not_zeros():
    torch.manual_seed(0)
    net = MultimodalNet(SPEC, ModelConfig(embed_dim=8, hidden=16), missing="mask")
    with torch.no_grad():
        net.placeholders.normal_()
    x = _batch()
    present = torch.tensor([[True, False, True]] * 6)
    tokens, _ = net.features(x, present)
    assert torch.allclose(tokens[:, 1], net.placeholders[1].expand(6, 8))
    loss = F.cross_entropy(net(x, present), torch.zeros(6, dtype=torch.long))
    loss.backward()
    assert net.placeholders.grad[1].abs().sum() > 0  # the missing slot is trained
    assert net.placeholders.grad[0].abs().sum() == 0  # present slots do not use it
    assert net.encoders["vec"].net[1].weight.grad.abs().sum() == 0  # absent encoder gets no gradient


def test_zero_fill_feeds_zeros_through_the_encoder():
    net = MultimodalNet(SPEC, ModelConfig(embed_dim=8, hidden=16), missing="zero")
    x = _batch()
    present = torch.tensor([[True, False, True]] * 6)
    tokens, _ = net.features(x, present)
    expected = net.encoders["vec"](torch.zeros(6, 12))
    assert torch.allclose(tokens[:, 1], expected)


def test_substitutes_replace_missing_embeddings():
    net = MultimodalNet(SPEC, ModelConfig(embed_dim=8, hidden=16))
    present = torch.tensor([[True, False, True]] * 6)
    subs = torch.full((6, 3, 8), 3.0)
    tokens, _ = net.features(_batch(), present, substitutes=subs)
    assert torch.all(tokens[:, 1] == 3.0) and not torch.all(tokens[:, 0] == 3.0)
