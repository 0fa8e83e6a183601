"""The vectorized client engine reproduces the per-client loop, and falls back to it when it cannot."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from mmfl.data.dataset import DataSpec
from mmfl.engine import steps
from mmfl.local import run_experiment
from mmfl.engine.vectorized.batches import build_chunk_batches
from mmfl.engine.vectorized import client_train_vectorized
from mmfl.engine.vectorized.stack import StackView
from mmfl.methods.base import Context, iterate_batches
from mmfl.methods.fedavg import FedAvg
from mmfl.methods.fedprox import FedProx
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.engines import max_diff

TOL = 1e-6
ONE_EPOCH = {"local_epochs": 1}


def _setup(tmp_path: Path, **sections):
    train = {"local_epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3,
             "vector_chunk": 3, **sections.pop("train", {})}
    cfg = parse_experiment(tiny_config_dict(tmp_path, train=train, **sections))
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    state = steps.init_state(cfg, data.spec)
    return cfg, shards, state



def _assert_same_round(cfg, shards, state, method=None):
    ids = steps.sample_clients(cfg, 1)
    if method is None:
        loop = steps.client_train(cfg, state, shards, ids)
        vec = client_train_vectorized(cfg, state, shards, ids)
    else:
        loop = [method.client_update(state, shards[c], Context(cfg, DataSpec.from_json(state.meta["data_spec"]), 1, c))
                for c in ids]
        vec = client_train_vectorized(cfg, state, shards, ids, method=method)
    assert [u.client_id for u in vec] == [u.client_id for u in loop]
    for u, v in zip(loop, vec):
        assert v.num_samples == u.num_samples
        assert v.metrics["local_steps"] == u.metrics["local_steps"]
        assert v.metrics["train_loss"] == pytest.approx(u.metrics["train_loss"], abs=1e-5)
        assert max_diff(u.tensors, v.tensors) < TOL
    agg_loop = steps.aggregate(cfg, state, loop)
    agg_vec = steps.aggregate(cfg, state, vec)
    assert max_diff(agg_loop.tensors, agg_vec.tensors) < TOL
    # Training really moved the model (the comparison is not between two untouched copies).
    assert max_diff(agg_loop.tensors, state.tensors) > 1e-3
    return loop, vec


def test_batch_schedule_follows_the_loop_order():
    from mmfl.data.dataset import ModalitySpec, MultimodalDataset

    spec = DataSpec((ModalitySpec("a", (2,)), ModalitySpec("b", (1,))), 3)
    shards = []
    for n in (5, 11):
        x = torch.arange(n, dtype=torch.float32)
        shards.append(MultimodalDataset(spec, {"a": x[:, None].repeat(1, 2), "b": x[:, None]}, torch.arange(n) % 3))
    b = build_chunk_batches(shards, [7, 8], batch_size=4, epochs=2)
    assert b.num_steps == 6 and b.steps.tolist() == [4, 6]
    for j, (shard, seed) in enumerate(zip(shards, [7, 8])):
        gen = torch.Generator().manual_seed(seed)
        expected = [idx for _ in range(2) for idx in iterate_batches(len(shard), 4, gen)]
        for s, idx in enumerate(expected):
            k = len(idx)
            assert b.inputs["b"][s, j, :k, 0].long().tolist() == idx.tolist()
            assert b.weight[s, j].tolist() == [1.0] * k + [0.0] * (4 - k)
        assert b.active[:, j].tolist() == [True] * len(expected) + [False] * (6 - len(expected))


def test_fedavg_round_equals_loop_with_unequal_clients_missing_and_momentum(tmp_path):
    cfg, shards, state = _setup(tmp_path)
    sizes = [len(s) for s in shards.values()]
    assert len(set(sizes)) > 1 and any(n % 16 for n in sizes)  # unequal sizes, partial last batches
    assert any(bool((~s.present).any()) for s in shards.values())  # missing modalities present
    _assert_same_round(cfg, shards, state)


def test_fedprox_round_equals_loop(tmp_path):
    cfg, shards, state = _setup(tmp_path, method={"name": "fedprox", "params": {"mu": 0.5}}, train=ONE_EPOCH)
    loop, _ = _assert_same_round(cfg, shards, state)
    # The proximal term is part of the reported loss: it differs from plain FedAvg's.
    cfg_avg, _, _ = _setup(tmp_path, train=ONE_EPOCH)
    plain = steps.client_train(cfg_avg, state, shards, steps.sample_clients(cfg_avg, 1))
    assert any(abs(a.metrics["train_loss"] - b.metrics["train_loss"]) > 1e-6 for a, b in zip(loop, plain))


def test_zerofill_round_equals_loop_with_unused_placeholders(tmp_path):
    # The zero-fill model never uses its placeholders: the loop's SGD skips them (no weight decay).
    cfg, shards, state = _setup(tmp_path, method={"name": "zerofill"}, train=ONE_EPOCH)
    _, vec = _assert_same_round(cfg, shards, state)
    assert torch.equal(vec[0].tensors["model/placeholders"], state.tensors["model/placeholders"])


def test_attention_fusion_round_equals_loop(tmp_path):
    cfg, shards, state = _setup(tmp_path, model={"embed_dim": 16, "hidden": 32, "fusion": "attention"}, train=ONE_EPOCH)
    _assert_same_round(cfg, shards, state)


class _ProxZeroFill(FedProx):
    """FedProx's penalty on the zero-fill model, whose placeholders only the penalty reaches."""

    missing_strategy = "zero"


def test_a_parameter_only_the_penalty_uses_trains_as_in_the_loop(tmp_path):
    # The loop's backward includes the proximal term, so the placeholders get a (zero) gradient
    # and SGD's weight decay moves them; the vectorized engine must not hold them fixed.
    cfg, shards, _ = _setup(tmp_path, method={"name": "fedprox", "params": {"mu": 0.5}}, train=ONE_EPOCH)
    method = _ProxZeroFill()
    state = _method_state(cfg, method)
    state.tensors["model/placeholders"] = torch.ones_like(state.tensors["model/placeholders"])
    loop, _ = _assert_same_round(cfg, shards, state, method)
    assert max_diff({"p": loop[0].tensors["model/placeholders"]}, {"p": state.tensors["model/placeholders"]}) > 1e-5


class _GRUNet(nn.Module):
    """Modality ``a`` read as a sequence by a GRU."""

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.gru = nn.GRU(2, 8, batch_first=True)
        self.b = nn.Linear(spec.modalities[1].shape[0], 8)
        self.head = nn.Linear(16, spec.num_classes)

    def forward(self, inputs, present):
        seq = inputs["a"].reshape(inputs["a"].shape[0], -1, 2)
        return self.head(torch.cat([self.gru(seq)[0][:, -1], self.b(inputs["b"])], dim=1))


class _ItemNet(_GRUNet):
    """Reads a tensor value into Python (``.item()``), which no vmap batching rule can express."""

    def forward(self, inputs, present):
        scale = 1.0 / (1.0 + inputs["a"].abs().mean().item())
        return super().forward({**inputs, "a": inputs["a"] * scale}, present)


class _GRUMethod(FedAvg):
    vectorizable = True

    def build_model(self, spec, cfg, resources=None):
        return _GRUNet(spec)


class _ItemMethod(FedAvg):
    vectorizable = True

    def build_model(self, spec, cfg, resources=None):
        return _ItemNet(spec)


class _CustomLoss(FedAvg):
    """Inherits vectorizable = True from FedAvg but changes the batch loss, which the engine does not reproduce."""

    def batch_loss(self, model, batch, state, ctx):
        return F.cross_entropy(model(batch.inputs, batch.present), batch.labels, label_smoothing=0.1)


def _method_state(cfg, method):
    return method.init_state(steps.prepare_data(cfg).spec, cfg)


def test_gru_model_is_vectorized_when_the_probe_confirms_it(tmp_path, caplog):
    # torch.func differentiates nn.GRU through its decomposition, so vmap over grad works here;
    # the probe checked it against autograd and the round must equal the loop.
    cfg, shards, _ = _setup(tmp_path, train=ONE_EPOCH)
    method = _GRUMethod()
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        _assert_same_round(cfg, shards, _method_state(cfg, method), method)
    assert not any("one by one" in r.message for r in caplog.records)


@pytest.mark.parametrize(("method", "why"), [(_ItemMethod(), "vmap over clients failed"), (_CustomLoss(), "batch_loss")])
def test_falls_back_to_the_loop_and_says_why(tmp_path, caplog, method, why):
    cfg, shards, _ = _setup(tmp_path, train=ONE_EPOCH)
    state = _method_state(cfg, method)
    ids = steps.sample_clients(cfg, 1)
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        vec = client_train_vectorized(cfg, state, shards, ids, method=method)
    assert any("training clients one by one" in r.message and why in r.message for r in caplog.records)
    spec = DataSpec.from_json(state.meta["data_spec"])
    loop = [method.client_update(state, shards[c], Context(cfg, spec, 1, c)) for c in ids]
    for u, v in zip(loop, vec):
        assert max_diff(u.tensors, v.tensors) == 0.0


def test_dropout_falls_back(tmp_path, caplog):
    cfg, shards, state = _setup(tmp_path, model={"embed_dim": 16, "hidden": 32, "dropout": 0.2}, train=ONE_EPOCH)
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        client_train_vectorized(cfg, state, shards, steps.sample_clients(cfg, 1))
    assert any("dropout" in r.message for r in caplog.records)


def test_local_engine_runs_vectorized_like_the_loop(tmp_path):
    results = {}
    for engine in ("loop", "vectorized"):
        cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2, "local_epochs": 1, "batch_size": 16,
                                                              "lr": 0.05, "engine": engine, "vector_chunk": 2},
                                            eval={"every": 2}))
        results[engine] = run_experiment(cfg, progress=False)
    loop, vec = results["loop"], results["vectorized"]
    assert vec.rounds_done == 2 and loop.experiment_id != vec.experiment_id
    for a, b in zip(loop.history, vec.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    for pattern, vals in loop.final.items():
        assert vec.final[pattern]["acc"] == pytest.approx(vals["acc"], abs=1e-6)


@given(st.lists(st.tuples(st.integers(1, 13), st.integers(1, 6), st.integers(1, 3), st.integers(0, 2**31)),
                min_size=1, max_size=4))
def test_padded_schedule_holds_each_clients_loop_batches(clients):
    """Property (seeded): per-client sizes, batch sizes and epochs; each client's real rows, step by
    step, are the loop's batches, its padded slots and steps have weight 0, its active steps are its own."""
    from mmfl.engine.vectorized.batches import chunk_schedule

    sizes, batch, epochs, seeds = (list(x) for x in zip(*clients))
    sched = chunk_schedule(sizes, seeds, batch, epochs)
    assert sched.index.shape[2] == max(min(b, n) for b, n in zip(batch, sizes))
    for j, (n, b, e, seed) in enumerate(clients):
        gen = torch.Generator().manual_seed(seed)
        expected = [idx for _ in range(e) for idx in iterate_batches(n, b, gen)]
        assert int(sched.steps[j]) == len(expected)
        assert sched.active[:, j].tolist() == [s < len(expected) for s in range(sched.index.shape[0])]
        for s in range(sched.index.shape[0]):
            real = sched.weight[s, j] > 0
            got = sched.index[s, j][real].tolist()
            assert got == (expected[s].tolist() if s < len(expected) else [])
            assert bool(real[: len(got)].all())  # real slots first, padding after


# Samples that miss every modality are dropped: small clients can be left with no sample at all.
EMPTY_CLIENTS = {"partition": {"scheme": "dirichlet", "num_clients": 40, "alpha": 100.0, "min_client_size": 1},
                 "missing": {"pattern": "independent", "rate": 0.8, "drop_all_missing": True}}


@pytest.mark.parametrize("method", ["fedavg", "pmcmfl", "flexmod", "threefm"])
def test_a_client_without_samples_trains_together_with_the_others_as_in_the_loop(tmp_path, method, caplog):
    """The loop gives an empty client a 0-step update; the vectorized engine does the same, within
    the batch (no fallback of the whole round), also when the first sampled client is empty."""
    cfg, shards, _ = _setup(tmp_path, method={"name": method}, train={"batch_size": 2, "engine": "vectorized",
                                                                      "vector_chunk": 8}, **EMPTY_CLIENTS)
    state = steps.init_state(cfg, steps.prepare_data(cfg).spec)
    empty = [c for c, s in shards.items() if len(s) == 0]
    assert empty and len(empty) < len(shards)
    ids = [empty[0], *[c for c in steps.sample_clients(cfg, 1) if c not in empty]]  # it shares a chunk
    loop_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"engine": "loop"})})
    loop = steps.client_train(loop_cfg, state, shards, ids)
    with caplog.at_level(logging.INFO, logger="mmfl"):
        vec = steps.client_train(cfg, state, shards, ids)
    assert not any("one by one" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert all(isinstance(v.tensors, StackView) for v in vec)
    for u, v in zip(loop, vec):
        assert u.num_samples == v.num_samples and u.metrics.keys() == v.metrics.keys()
        for k in u.metrics:
            if not k.endswith("time_s"):
                assert v.metrics[k] == pytest.approx(u.metrics[k], rel=1e-6, abs=1e-6), k
        assert max_diff(u.tensors, dict(v.tensors)) < TOL
    assert loop[0].metrics["local_steps"] == 0 and loop[0].num_samples == 0
