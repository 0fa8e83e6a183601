"""PmcmFL's paper variant against worked references: batch-wise prototype contrast at t = 0.07,
per-term weights, prototypes from complete samples, retrieval inference, the variant defaults."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mmfl.data import build_federated_data
from mmfl.errors import ConfigError
from mmfl.methods import get_method, parse_experiment
from mmfl.methods.base import Context, LocalData
from mmfl.methods.pmcmfl import PmcmFLParams, match_scores, retrieval_masks
from mmfl.methods.pmcmfl_losses import batch_prototype_contrast, paper_contrast_terms
from mmfl.methods.prototypes import compute_prototypes
from tests.conftest import tiny_config_dict

T = 0.07


def _lse_loss(row: list[float], target: int) -> float:
    """-log softmax(row / T)[target], computed stably by hand."""
    z = [v / T for v in row]
    top = max(z)
    return -(z[target] - top - math.log(sum(math.exp(v - top) for v in z)))


def test_batch_contrast_by_hand_at_temperature_007():
    rep = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # class 0, class 1
    labels = torch.tensor([0, 1, 0])
    targets = protos[labels]  # row i = prototype of sample i's class: [[1,0],[0,2],[1,0]]
    # dot products rep_i . target_j: row0 (1,0,1), row1 (0,2,0), row2 (1,2,1); positive = column i.
    # Sample 2 (class 0) has sample 0's prototype as a negative equal to its own positive.
    expected = (_lse_loss([1, 0, 1], 0) + _lse_loss([0, 2, 0], 1) + _lse_loss([1, 2, 1], 2)) / 3
    # closed forms: log(2 + e^{-1/T}), log(1 + 2 e^{-2/T}), log(2 + e^{1/T})
    closed = (math.log(2 + math.exp(-1 / T)) + math.log(1 + 2 * math.exp(-2 / T)) + math.log(2 + math.exp(1 / T))) / 3
    assert expected == pytest.approx(closed, rel=1e-12)
    got = batch_prototype_contrast(rep, targets, T).item()
    assert got == pytest.approx(expected, rel=1e-9)
    # unnormalised: scaling the representations changes the loss (cosine would not)
    assert batch_prototype_contrast(2 * rep, targets, T).item() != pytest.approx(got, rel=1e-3)
    # empty batch: zero, differentiable
    empty = torch.zeros(0, 2, requires_grad=True)
    zero = batch_prototype_contrast(empty, torch.zeros(0, 2), T)
    assert zero.item() == 0.0 and zero.requires_grad


def test_paper_terms_weights_and_rows():
    fused = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    tokens = torch.stack([fused, -fused], dim=1)  # (B, M=2, D)
    present = torch.tensor([[True, True], [True, False], [False, True]])
    labels = torch.tensor([0, 1, 0])
    protos = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)  # (M, C, D)
    avail = torch.ones(2, 2, dtype=torch.bool)
    fp = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    fa = torch.tensor([True, True])
    # official defaults: fused 0.01, modality terms 0 -> only the fused term, weighted
    total, parts = paper_contrast_terms(tokens, fused, present, labels, protos, avail, fp, fa,
                                        torch.tensor([0.0, 0.0]), 0.01, T)
    fused_term = batch_prototype_contrast(fused, fp[labels], T)
    assert set(parts) == {"fused"}
    assert total.item() == pytest.approx(0.01 * fused_term.item(), rel=1e-12)
    # modality 1 with weight 0.5: only samples that have modality 1 (rows 0 and 2) enter its term
    total, parts = paper_contrast_terms(tokens, fused, present, labels, protos, avail, fp, fa,
                                        torch.tensor([0.0, 0.5]), 0.01, T)
    rows = torch.tensor([0, 2])
    # by hand: tokens[rows, 1] = [[-1, 0], [-1, -1]], targets = protos[1][[0, 0]] = [[0, 1], [0, 1]]
    # dot products: row0 (0, 0), row1 (-1, -1) -> each log 2
    assert parts["1"].item() == pytest.approx(math.log(2), rel=1e-12)
    torch.testing.assert_close(parts["1"], batch_prototype_contrast(tokens[rows, 1], protos[1][labels[rows]], T))
    assert total.item() == pytest.approx(0.01 * fused_term.item() + 0.5 * math.log(2), rel=1e-12)
    # a class without a fused prototype leaves its samples out of the fused term
    _, parts = paper_contrast_terms(tokens, fused, present, labels, protos, avail, fp, torch.tensor([True, False]),
                                    torch.tensor([0.0, 0.0]), 1.0, T)
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(parts["fused"], batch_prototype_contrast(fused[keep], fp[labels[keep]], T))


def test_variant_defaults_match_the_official_code():
    paper = PmcmFLParams()
    # Noirebao/Multimodal_Federated src/main.py: f_loss_weight 0.01, v/l_loss_weight 1e-8 (0 here),
    # regularization_start_round 2; BaseTrainer: logit scale 1/0.07, plain task loss on masked inputs.
    assert (paper.variant, paper.temperature, paper.fused_weight, paper.modality_weight) == ("paper", 0.07, 0.01, 0.0)
    assert (paper.contrast, paper.contrast_start_round, paper.mask_weight) == ("batch", 2, 1.0)
    assert (paper.prototype_samples, paper.inference) == ("complete", "retrieval")
    mmfl = PmcmFLParams(variant="mmfl")
    assert (mmfl.mask_weight, mmfl.temperature, mmfl.contrast_weight, mmfl.contrast_fused) == (0.5, 0.5, 1.0, True)
    assert (mmfl.contrast, mmfl.prototype_samples, mmfl.inference) == ("classes", "present", "classifier")
    assert PmcmFLParams(temperature=0.2).temperature == 0.2  # an explicit value wins
    with pytest.raises(ValueError, match="contrast_weight applies to variant 'mmfl'"):
        PmcmFLParams(contrast_weight=1.0)
    with pytest.raises(ValueError, match="fused_weight applies to variant 'paper'"):
        PmcmFLParams(variant="mmfl", fused_weight=0.1)
    w = PmcmFLParams(modality_weights={"b": 0.3}).modality_weight_vector(("a", "b"))
    assert w.tolist() == pytest.approx([0.0, 0.3])
    with pytest.raises(ConfigError, match="'c' is not a modality"):
        PmcmFLParams(modality_weights={"c": 0.3}).modality_weight_vector(("a", "b"))


def test_retrieval_masks_by_hand():
    # 2 modalities, 3 classes, D = 2. A sample with only modality 0, closest (cosine) to class 2.
    protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                           [[5.0, 0.0], [0.0, 6.0], [7.0, 7.0]]])
    avail = torch.ones(2, 3, dtype=torch.bool)
    emb = torch.tensor([[[2.0, 2.1], [0.0, 0.0]],      # only modality 0 -> class 2 ([1, 1])
                        [[0.0, 0.0], [0.5, 3.0]]])     # only modality 1 -> class 1 ([0, 6])
    present = torch.tensor([[True, False], [False, True]])
    scores = match_scores(emb, present, protos, avail, "cosine")
    # sample 0: 1 - cos to each class prototype of modality 0; class 2 the smallest distance
    cos = [(2.0 * 1 + 2.1 * 0) / math.hypot(2, 2.1), 2.1 / math.hypot(2, 2.1), 4.1 / (math.hypot(2, 2.1) * math.sqrt(2))]
    torch.testing.assert_close(scores[0], torch.tensor([c - 1 for c in cos]))
    model = SimpleNamespace(placeholders=torch.full((2, 2), -9.0))
    masks = retrieval_masks(model, scores, protos, avail)
    torch.testing.assert_close(masks[0], protos[:, 2])  # every prototype of class 2 (modality 1's is [7, 7])
    torch.testing.assert_close(masks[1], protos[:, 1])
    # a class without a prototype for a modality falls back to the placeholder
    avail[1, 2] = False
    masks = retrieval_masks(model, match_scores(emb, present, protos, avail, "cosine"), protos, avail)
    torch.testing.assert_close(masks[0, 1], torch.tensor([-9.0, -9.0]))


def _setup(tmp_path, **params):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "pmcmfl", "params": params}))
    data = build_federated_data(cfg)
    method = get_method("pmcmfl")
    return cfg, data, method, method.init_state(data.spec, cfg)


def test_prototypes_from_complete_samples_only(tmp_path):
    cfg, data, method, state = _setup(tmp_path)
    model = method.load_model(state.model_weights(), Context(cfg, data.spec, 1))
    shard = data.clients[0]
    protos = compute_prototypes(model, shard, data.spec.num_classes, complete_only=True)
    with torch.no_grad():
        emb = model.encode(shard.inputs)
    complete = shard.present.all(dim=1)
    assert (~complete).any() and complete.any()
    for j, name in enumerate(data.spec.names):
        for c in range(data.spec.num_classes):
            rows = (shard.labels == c) & complete
            assert protos[f"proto_count/{name}"][c].item() == rows.sum().item()
            if rows.any():
                torch.testing.assert_close(protos[f"proto/{name}"][c], emb[rows, j].mean(0), atol=1e-5, rtol=1e-5)
    assert torch.equal(protos["proto_count/fused"], protos[f"proto_count/{data.spec.names[0]}"])


def test_contrast_starts_in_round_two(tmp_path):
    cfg, data, method, state = _setup(tmp_path, fused_weight=1.0, modality_weight=1.0)
    # a library with every prototype available, so only the start round decides
    for key in list(state.tensors):
        if key.startswith("proto/"):
            state.tensors[key] = torch.randn(state.tensors[key].shape, generator=torch.Generator().manual_seed(0))
        elif key.startswith("proto_count/"):
            state.tensors[key] = torch.ones_like(state.tensors[key])
    shard = data.clients[0]
    losses = {}
    for r in (1, 2):
        ctx = Context(cfg, data.spec, r)
        model = method.load_model(state.model_weights(), ctx)
        torch.manual_seed(0)
        batch = LocalData(dict(shard.inputs), shard.present, shard.labels).take(torch.arange(len(shard)), "cpu")
        losses[r] = method.batch_loss(model, batch, state, ctx).item()
    model = method.load_model(state.model_weights(), Context(cfg, data.spec, 1))
    from mmfl.methods.pmcmfl import label_masks
    from mmfl.methods.prototypes import library

    protos, avail = library(state.tensors, data.spec.names)
    _, fused = model.features(shard.inputs, shard.present, label_masks(model, protos, avail, shard.labels))
    ce = torch.nn.functional.cross_entropy(model.head(fused), shard.labels).item()
    assert losses[1] == pytest.approx(ce, rel=1e-5)  # round 1: the plain task loss on masked inputs
    assert losses[2] > losses[1] + 1e-3
