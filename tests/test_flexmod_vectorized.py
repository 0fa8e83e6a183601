"""FlexMod and Partial Update: the vectorized engine trains their clients' step plans together, as the loop does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mmfl.engine import steps, vectorized
from mmfl.engine.vectorized import client_train_vectorized, loop_train
from mmfl.engine.vectorized.method_trainer import MethodTrainer, method_reason
from mmfl.engine.vectorized.stack import StackView
from mmfl.methods import parse_experiment, resolve
from tests.conftest import tiny_config_dict
from tests.helpers.engines import max_diff

TOL = 1e-6
# Metrics the two engines must agree on (train_time_s is a wall time, measured differently).
SAME = ("train_loss", "local_steps", "encoder_updates", "encoder_flops")


def _setup(tmp_path: Path, method: str, params: dict, **train):
    train = {"local_epochs": 2, "batch_size": 16, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3,
             "vector_chunk": 3, **train}
    cfg = parse_experiment(tiny_config_dict(
        tmp_path, method={"name": method, "params": params}, train=train,
        data={"name": "synthetic", "synthetic": {"num_samples": 300, "num_classes": 4, "dims": {"a": 8, "b": 6, "c": 5}}},
        partition={"scheme": "dirichlet", "num_clients": 5, "alpha": 0.5, "min_client_size": 8}))
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    state = steps.init_state(cfg, data.spec)
    return cfg, shards, state



CASES = [
    ("flexmod", {"val_fraction": 0.2}),
    ("flexmod", {"val_fraction": 0.2, "reward": "local", "cost": "count"}),
    ("partial_update", {}),
]


@pytest.mark.parametrize("method,params", CASES, ids=["flexmod", "flexmod-local-reward", "partial_update"])
def test_vectorized_round_equals_the_loop(tmp_path, method, params):
    cfg, shards, state = _setup(tmp_path, method, params)
    ids = steps.sample_clients(cfg, 1)
    assert len({len(shards[c]) for c in ids}) == len(ids)  # unequal clients: unequal step plans
    m = resolve(cfg).method
    loop = loop_train(m, cfg, state, shards, ids)
    vec = client_train_vectorized(cfg, state, shards, ids)
    assert [u.client_id for u in vec] == [u.client_id for u in loop]
    assert all(isinstance(u.tensors, StackView) for u in vec)  # trained together, not one by one
    plans = set()
    for u, v in zip(loop, vec):
        assert v.num_samples == u.num_samples and v.meta == u.meta
        assert set(v.metrics) == set(u.metrics)
        for k in u.metrics:
            if k in SAME or k.startswith("value/") or k == "val_acc":
                assert v.metrics[k] == pytest.approx(u.metrics[k], rel=1e-9, abs=TOL), k
        assert v.metrics["train_time_s"] > 0
        assert max_diff(u.tensors, v.tensors) < TOL
        plans.add((u.metrics["local_steps"], u.metrics["encoder_updates"]))
    assert len(plans) > 1  # the clients' plans differ
    agg_loop, agg_vec = steps.aggregate(cfg, state, loop), steps.aggregate(cfg, state, vec)
    assert max_diff(agg_loop.tensors, agg_vec.tensors) < TOL
    assert max_diff(agg_loop.tensors, state.tensors) > 1e-3  # the round trained
    # every encoder trains less often than the fusion (the schedule really masks updates)
    h = agg_vec.meta["history"][-1]
    assert h["encoder_updates"] < 3 * sum(u.metrics["local_steps"] for u in vec)


@pytest.mark.parametrize("method", ["flexmod", "partial_update"])
def test_auto_engine_vectorizes_them(tmp_path, method, caplog):
    cfg, shards, state = _setup(tmp_path, method, {})
    assert cfg.train.engine == "auto"
    m = resolve(cfg).method
    assert method_reason(m) is None
    assert isinstance(vectorized.trainer_for(m, cfg, state, shards[0]), MethodTrainer)
    ids = steps.sample_clients(cfg, 1)
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        auto = steps.client_train(cfg, state, shards, ids)
    said = [r.getMessage() for r in caplog.records if "train.engine auto" in r.getMessage()]
    assert not any("one by one" in m for m in said), said
    assert all(isinstance(u.tensors, StackView) for u in auto)  # trained together
    loop = loop_train(m, cfg, state, shards, ids)
    for u, v in zip(loop, auto):
        assert max_diff(u.tensors, dict(v.tensors)) < TOL
        assert v.metrics["encoder_flops"] == pytest.approx(u.metrics["encoder_flops"], rel=1e-12)


def test_an_untrained_encoder_and_its_momentum_stay_untouched(tmp_path):
    """A step that leaves an encoder out skips it entirely (no weight decay, no momentum), in both engines:
    a client whose plan never trains an encoder returns it exactly as it went out, while clients of the
    same chunk whose plans do train it change it."""
    cfg, shards, state = _setup(tmp_path, "partial_update", {"min_frequency": 0.0, "budget": 0.4, "cost": "count"},
                                local_epochs=1)
    ids = steps.sample_clients(cfg, 1)
    start = state.model_weights()

    def encoder_kept(u, n: str) -> bool:
        return all(torch.equal(v, start[k]) for k, v in u.model_weights().items() if k.startswith(f"encoders.{n}."))

    vec = client_train_vectorized(cfg, state, shards, ids)
    loop = loop_train(resolve(cfg).method, cfg, state, shards, ids)
    assert all(isinstance(u.tensors, StackView) for u in vec)
    for updates in (vec, loop):
        kept = {(u.client_id, n) for u in updates for n in "abc" if encoder_kept(u, n)}
        changed = {(u.client_id, n) for u in updates for n in "abc"} - kept
        # budget 0.4 of three encoders: few encoders per step, so some client never trains some encoder
        # that another client trains
        assert {n for _, n in kept} & {n for _, n in changed}
        assert all(not torch.equal(u.model_weights()["head.weight"], start["head.weight"]) for u in updates)
    assert {(u.client_id, n) for u in vec for n in "abc" if encoder_kept(u, n)} == \
        {(u.client_id, n) for u in loop for n in "abc" if encoder_kept(u, n)}
