"""PmcmFL: its two losses on hand-checkable tensors, the prototype library, inference options, 2 rounds."""

from __future__ import annotations

import math

import pytest
import torch

from mmfl.data import build_federated_data
from mmfl.engine import steps
from mmfl.local import run_experiment
from mmfl.methods import get_method
from mmfl.methods.base import Context
from mmfl.methods.pmcmfl_losses import prototype_contrastive_loss, task_calibrated_loss
from mmfl.methods.prototypes import aggregate_prototypes, compute_prototypes, library
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def test_task_calibrated_loss_weights_masked_samples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    masked = torch.tensor([0, 1, 2])
    ce = [math.log(1 + math.exp(-2.0)), math.log(1 + math.exp(1.0)), math.log(2.0)]
    w = [1.0, 0.5, 0.25]
    expected = sum(a * b for a, b in zip(w, ce)) / sum(w)
    assert task_calibrated_loss(logits, labels, masked, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # mask_weight 1: plain cross-entropy
    assert task_calibrated_loss(logits, labels, masked, 1.0).item() == pytest.approx(sum(ce) / 3, rel=1e-6)


def test_prototype_contrastive_loss_by_hand():
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    emb = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 2])
    t = 0.5
    avail = torch.tensor([True, True, True])
    # sample 0: cos = (1, 0, -1) -> -log(e^2 / (e^2 + e^0 + e^-2)); sample 1: cos = (0, 1, 0), label 2
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    l1 = -math.log(1 / (1 + math.exp(2) + 1))
    got = prototype_contrastive_loss(emb, labels, protos, avail, t).item()
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # class 2 without a prototype: sample 1 is skipped and class 2 leaves the denominator of sample 0
    avail = torch.tensor([True, True, False])
    got = prototype_contrastive_loss(emb, labels, protos, avail, t).item()
    assert got == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)), rel=1e-6)
    # nothing applicable: zero but differentiable
    emb.requires_grad_(True)
    zero = prototype_contrastive_loss(emb, labels, protos, torch.zeros(3, dtype=torch.bool), t)
    assert zero.item() == 0.0 and zero.requires_grad


def _setup(tmp_path, **params):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "pmcmfl", "params": params}))
    data = build_federated_data(cfg)
    method = get_method("pmcmfl")
    state = method.init_state(data.spec, cfg)
    return cfg, data, method, state


def test_prototypes_are_class_means_and_aggregate_by_count(tmp_path):
    cfg, data, method, state = _setup(tmp_path)
    ctx = Context(cfg, data.spec, 1)
    model = method.load_model(state.model_weights(), ctx)
    shard = data.clients[0]
    protos = compute_prototypes(model, shard, data.spec.num_classes)
    with torch.no_grad():
        emb = model.encode(shard.inputs)
    for j, name in enumerate(data.spec.names):
        for c in range(data.spec.num_classes):
            rows = (shard.labels == c) & shard.present[:, j]
            assert protos[f"proto_count/{name}"][c].item() == rows.sum().item()
            if rows.any():
                torch.testing.assert_close(protos[f"proto/{name}"][c], emb[rows, j].mean(0), atol=1e-5, rtol=1e-5)

    a = {"proto/x": torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0]]), "proto_count/x": torch.tensor([1.0, 0.0, 2.0])}
    b = {"proto/x": torch.tensor([[4.0, 0.0], [0.0, 0.0], [2.0, 2.0]]), "proto_count/x": torch.tensor([2.0, 0.0, 1.0])}
    prev = {"proto/x": torch.tensor([[9.0, 9.0], [7.0, 7.0], [9.0, 9.0]]), "proto_count/x": torch.tensor([3.0, 6.0, 3.0])}
    out = aggregate_prototypes([a, b], ["x"], prev)
    torch.testing.assert_close(out["proto/x"], torch.tensor([[3.0, 1.0 / 3], [7.0, 7.0], [4.0, 4.0]]))
    torch.testing.assert_close(out["proto_count/x"], torch.tensor([3.0, 6.0, 3.0]))


def test_uni_modal_inference_options(tmp_path):
    cfg, data, method, state = _setup(tmp_path)
    clients = list(range(len(data.clients)))
    shards = dict(enumerate(data.clients))
    updates = steps.upload_prototypes(cfg, state, shards, steps.client_train(cfg, state, shards, clients))
    state = steps.aggregate(cfg, state, updates)
    protos, avail = library(state.tensors, data.spec.names)
    assert avail.all(), "after a round every class has prototypes"

    test = data.test
    only_a = test.with_present(torch.tensor([[True, False]]).expand(len(test), 2))
    mixed_present = test.present.clone()
    mixed_present[: len(test) // 2, 1] = False
    mixed = test.with_present(mixed_present)
    results = {}
    for option in ("classifier", "retrieval", "l1", "l2", "cosine"):
        c = parse_experiment({**tiny_config_dict(tmp_path), "method": {"name": "pmcmfl", "params": {"inference": option}}})
        ctx = Context(c, data.spec, state.round)
        model = method.load_model(state.model_weights(), ctx)
        out = method.predict(model, state, only_a.inputs, only_a.present, ctx)
        assert out.shape == (len(test), data.spec.num_classes)
        results[option] = out
        with torch.no_grad():
            emb = model.encode(only_a.inputs)[:, 0]
            plain = model(mixed.inputs, mixed.present)
        if option == "l2":  # nearest prototype of the available modality
            torch.testing.assert_close(out.argmax(1), torch.cdist(emb, protos[0]).argmin(1))
        if option == "retrieval":  # the missing modality masked by the nearest (cosine) class prototype
            cos = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(protos[0], dim=1).T
            subs = protos[:, cos.argmax(1)].transpose(0, 1)
            with torch.no_grad():
                expect = model(only_a.inputs, only_a.present, subs)
            torch.testing.assert_close(out, expect)
        # complete samples are classified by the model itself under every option
        mixed_out = method.predict(model, state, mixed.inputs, mixed.present, ctx)
        complete = mixed.present.all(1)
        torch.testing.assert_close(mixed_out[complete], plain[complete])
    assert not torch.equal(results["classifier"], results["l1"])


def test_pmcmfl_two_rounds_end_to_end(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "pmcmfl"}, train={"rounds": 2}))
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 2
    assert set(result.final) == {"full", "only:a", "only:b"}
    from mmfl.io.layout import load_round
    from mmfl.io.store import LocalStore

    state, _ = load_round(LocalStore(cfg.storage.root), result.experiment_id, 2)
    assert (state.tensors["proto_count/fused"] > 0).any()
    assert state.tensors["proto/a"].shape == (4, cfg.model.embed_dim)
