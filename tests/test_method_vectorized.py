"""Methods with losses of their own train together (the generic method trainer) and equal the loop."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mmfl.engine import steps
from mmfl.engine.vectorized import client_train_vectorized, loop_train
from mmfl.engine.vectorized.method_trainer import MethodTrainer
from mmfl.engine.vectorized.stack import StackView
from mmfl.methods import parse_experiment
from mmfl.methods.zerofill import ZeroFill
from tests.conftest import tiny_config_dict
from tests.helpers.engines import federation, max_diff

TOL = 1e-6


def _rounds(tmp_path: Path, engine: str, method: dict, rounds: int = 2, **sections):
    train = {"local_epochs": 2, "momentum": 0.9, "vector_chunk": 3, "engine": engine, **sections.pop("train", {})}
    cfg = parse_experiment(tiny_config_dict(tmp_path, train=train, method=method, **sections))
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    state = steps.init_state(cfg, data.spec)
    per_round, states = [], []
    for r in range(1, rounds + 1):
        trained = steps.client_train(cfg, state, shards, steps.sample_clients(cfg, r))
        per_round.append(trained)
        updates = steps.upload_prototypes(cfg, state, shards, trained)
        state = steps.aggregate(cfg, state, updates)
        states.append(state)
    return per_round, states



def _assert_same(tmp_path: Path, method: dict, rounds: int = 2, **sections):
    """Updates and state within 1e-6 after round 1; later rounds start from states that differ by
    float rounding, so they are held to 1e-5."""
    vec, vec_states = _rounds(tmp_path / "vec", "auto", method, rounds, **sections)
    loop, loop_states = _rounds(tmp_path / "loop", "loop", method, rounds, **sections)
    for r, (vec_updates, loop_updates) in enumerate(zip(vec, loop)):
        tol = TOL if r == 0 else 10 * TOL
        assert all(isinstance(u.tensors, StackView) for u in vec_updates)  # trained together
        for u, v in zip(loop_updates, vec_updates):
            assert u.client_id == v.client_id and u.num_samples == v.num_samples
            assert max_diff(u.tensors, dict(v.tensors)) < tol
            assert u.metrics.keys() == v.metrics.keys()
            for k in u.metrics:
                assert v.metrics[k] == pytest.approx(u.metrics[k], rel=tol, abs=tol), k
        assert max_diff(loop_states[r].tensors, vec_states[r].tensors) < tol
    return vec_states[-1]


@pytest.mark.parametrize("params", [
    {},  # the paper variant: batch-wise contrast from round 2, retrieval inference
    {"contrast_start_round": 1, "modality_weight": 0.5},  # every contrast term, from round 1
    {"variant": "mmfl"},  # class-wise InfoNCE contrast, calibrated task loss
])
def test_pmcmfl_vectorized_equals_the_loop(tmp_path, params):
    state = _assert_same(tmp_path, {"name": "pmcmfl", "params": params})
    assert float(state.tensors["proto_count/fused"].sum()) > 0  # the library was built and used


def test_pmcmfl_uses_the_method_trainer_under_auto(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        _rounds(tmp_path, "auto", {"name": "pmcmfl"}, rounds=1)
    said = [r.getMessage() for r in caplog.records if "train.engine auto" in r.getMessage()]
    assert not any("one by one" in m for m in said), said


def test_a_padding_sample_changes_nothing(tmp_path):
    """Clients of very different sizes share a chunk: the small ones' padded slots and steps are inert."""
    _assert_same(tmp_path, {"name": "pmcmfl", "params": {"contrast_start_round": 1}}, rounds=1,
                 partition={"alpha": 0.1, "min_client_size": 2}, train={"batch_size": 8, "vector_chunk": 4})


def test_the_probe_refuses_a_loss_that_differs_under_vmap(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "pmcmfl"}, model={"dropout": 0.2}))
    data = steps.prepare_data(cfg)
    trainer = MethodTrainer(steps.method_of(cfg), cfg, steps.init_state(cfg, data.spec))
    assert "dropout" in trainer.prepare(data.clients[0])


class _PersonalPlaceholders(ZeroFill):
    """Each client starts from placeholders of its own, which its zero-fill model never trains."""

    def start_weights(self, state, ctx):
        weights = state.model_weights()
        weights["placeholders"] = torch.full_like(weights["placeholders"], float(ctx.client_id + 1))
        return weights


def test_a_personal_start_tensor_that_does_not_train_stays_the_clients_own(tmp_path):
    """``start_weights`` may personalise tensors that do not train: each client keeps (and returns) its own."""
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "zerofill"}, partition={"scheme": "iid"},
                                            train={"engine": "vectorized", "vector_chunk": 4, "momentum": 0.9}))
    shards, state = federation(cfg)
    method, ids = _PersonalPlaceholders(), list(shards)
    loop, vec = loop_train(method, cfg, state, shards, ids), client_train_vectorized(cfg, state, shards, ids, method=method)
    assert all(isinstance(u.tensors, StackView) for u in vec)  # trained together, in one chunk
    for cid, u, v in zip(ids, loop, vec):
        assert float(u.tensors["model/placeholders"][0, 0]) == cid + 1
        assert max_diff(u.tensors, dict(v.tensors)) < TOL
