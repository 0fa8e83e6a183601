"""3FM's clients trained together (``mmfl/engine/vectorized/maml.py``) equal the per-client loop after a round."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mmfl.engine import steps, vectorized
from mmfl.engine.vectorized import client_train_vectorized, loop_train, trainer_for
from mmfl.engine.vectorized.maml import ThreeFMTrainer
from mmfl.engine.vectorized.stack import StackView
from mmfl.methods import parse_experiment, resolve
from tests.conftest import tiny_config_dict
from tests.helpers.engines import federation, max_diff

TOL = 1e-6
# The paper's protocol: each client holds its modality subset in 20% of its samples, all in 80%.
PROTOCOL = {"pattern": "subsets", "rate": 0.2, "client_modalities": [["a"], ["b"]]}


@pytest.fixture(autouse=True)
def _own_log_memory(monkeypatch):
    """The engine says each fallback once per process: these tests keep what they said to themselves."""
    monkeypatch.setattr(vectorized, "_WARNED", set())


def _setup(tmp_path: Path, params: dict | None = None, train: dict | None = None, missing: dict | None = None):
    train = {"local_epochs": 2, "vector_chunk": 3, **(train or {})}
    method = {"name": "threefm", "params": {"inner_lr": 0.05, "outer_lr": 0.01, **(params or {})}}
    cfg = parse_experiment(tiny_config_dict(tmp_path, train=train, method=method, missing=missing or PROTOCOL))
    return (cfg, *federation(cfg))


def _assert_same_round(cfg, shards, state) -> tuple[list, list]:
    ids = steps.sample_clients(cfg, 1)
    method = resolve(cfg).method
    loop = loop_train(method, cfg, state, shards, ids)
    vec = client_train_vectorized(cfg, state, shards, ids)
    assert all(isinstance(v.tensors, StackView) for v in vec)  # trained together, not by the loop
    assert [u.client_id for u in vec] == [u.client_id for u in loop]
    for u, v in zip(loop, vec):
        assert v.num_samples == u.num_samples
        assert v.metrics.keys() == u.metrics.keys()
        assert v.metrics["local_steps"] == u.metrics["local_steps"]
        assert v.metrics.get("fallback_splits") == u.metrics.get("fallback_splits")
        assert v.metrics["train_loss"] == pytest.approx(u.metrics["train_loss"], abs=1e-5)
        assert max_diff(u.tensors, dict(v.tensors)) < TOL
    agg_loop, agg_vec = steps.aggregate(cfg, state, loop), steps.aggregate(cfg, state, vec)
    assert max_diff(agg_loop.tensors, agg_vec.tensors) < TOL
    assert max_diff(agg_loop.tensors, state.tensors) > 1e-3  # the round trained
    return loop, vec


def test_paper_defaults_equal_the_loop(tmp_path):
    """SGD inner step, one of them, the whole shard as one batch, support/query by presence."""
    cfg, shards, state = _setup(tmp_path)
    p = cfg.method.resolution.params
    assert (p.inner_optimizer, p.inner_steps, p.batching, p.split, p.first_order) == ("sgd", 1, "full", "presence", False)
    assert len({len(s) for s in shards.values()}) > 1  # unequal clients: padded to the widest of a chunk
    loop, _ = _assert_same_round(cfg, shards, state)
    assert all(u.metrics["local_steps"] == 2 and u.metrics["fallback_splits"] == 0 for u in loop)


def test_official_code_inner_adam_five_steps_equals_the_loop(tmp_path):
    """``train.engine: vectorized`` (``auto`` keeps the loop for the second-order inner Adam, see below)."""
    cfg, shards, state = _setup(tmp_path, {"inner_optimizer": "adam", "inner_steps": 5, "inner_lr": 1e-3},
                                train={"engine": "vectorized"})
    _assert_same_round(cfg, shards, state)


def test_auto_keeps_the_loop_for_the_second_order_inner_adam(tmp_path, caplog):
    cfg, shards, state = _setup(tmp_path, {"inner_optimizer": "adam", "inner_steps": 5})
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        assert trainer_for(resolve(cfg).method, cfg, state, shards[0]) is None
    assert any("inner Adam" in r.getMessage() and "one by one" in r.getMessage() for r in caplog.records)
    # first order has no derivative through Adam's normalisation: trained together under auto
    cfg, shards, state = _setup(tmp_path / "fo", {"inner_optimizer": "adam", "first_order": True})
    assert isinstance(trainer_for(resolve(cfg).method, cfg, state, shards[0]), ThreeFMTrainer)


def test_first_order_equals_the_loop(tmp_path):
    cfg, shards, state = _setup(tmp_path, {"first_order": True, "inner_steps": 2})
    _assert_same_round(cfg, shards, state)


def _batch_with_a_single_sample_left(sizes: list[int]) -> int:
    """The smallest batch size at which some client's last batch holds one sample (the loop skips it)."""
    return next(b for b in range(4, 40) if any(n % b == 1 for n in sizes))


def test_minibatches_with_fallback_splits_and_skipped_batches_equal_the_loop(tmp_path):
    cfg, shards, state = _setup(tmp_path / "probe")
    batch = _batch_with_a_single_sample_left([len(s) for s in shards.values()])
    cfg, shards, state = _setup(tmp_path, {"batching": "minibatch"}, train={"batch_size": batch})
    loop, _ = _assert_same_round(cfg, shards, state)
    # Some batch lacked limited or complete samples (positional fallback), some client skipped a
    # one-sample batch, and clients took unequal numbers of meta-steps.
    assert sum(u.metrics["fallback_splits"] for u in loop) > 0
    full_steps = {u.client_id: 2 * -(-len(shards[u.client_id]) // batch) for u in loop}
    assert any(u.metrics["local_steps"] < full_steps[u.client_id] for u in loop)
    assert len({u.metrics["local_steps"] for u in loop}) > 1


def test_positional_split_first_order_inner_adam_equals_the_loop(tmp_path):
    cfg, shards, state = _setup(tmp_path, {"split": "batch", "batching": "minibatch", "inner_optimizer": "adam",
                                           "inner_steps": 2, "inner_lr": 1e-3, "first_order": True},
                                train={"batch_size": 16, "vector_chunk": 2}, missing={"pattern": "mixed", "rate": 0.5})
    _assert_same_round(cfg, shards, state)


def test_auto_picks_the_3fm_trainer_and_logs_no_loop_fallback(tmp_path, caplog):
    cfg, shards, state = _setup(tmp_path)
    assert cfg.train.engine == "auto"
    with caplog.at_level(logging.DEBUG, logger="mmfl.engine.vectorized"):
        method = resolve(cfg).method
        assert isinstance(trainer_for(method, cfg, state, shards[0]), ThreeFMTrainer)
        ids = steps.sample_clients(cfg, 1)
        updates = steps.client_train(cfg, state, shards, ids)
    assert all(isinstance(u.tensors, StackView) for u in updates)
    messages = [r.getMessage() for r in caplog.records]
    assert not any("one by one" in m for m in messages), messages
    assert any("vectorized engine trains the clients of 'threefm' together" in m for m in messages), messages


def test_a_model_with_dropout_uses_the_loop(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, missing=PROTOCOL, method={"name": "threefm"},
                                            model={"embed_dim": 16, "hidden": 32, "dropout": 0.2}))
    shards, state = federation(cfg)
    assert trainer_for(resolve(cfg).method, cfg, state, shards[0]) is None  # random masks: the loop


def test_auto_keeps_the_loop_for_attention_fusion(tmp_path, caplog):
    """The attention's key bias has an exact-zero gradient, which batched kernels round to noise that
    the outer Adam turns into steps of up to ``outer_lr`` (beyond 1e-6 after a round): auto keeps the loop."""
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"local_epochs": 2, "engine": "auto"},
                                            method={"name": "threefm", "params": {"inner_lr": 0.05, "outer_lr": 0.01}},
                                            missing=PROTOCOL, model={"embed_dim": 16, "hidden": 32, "fusion": "attention"}))
    shards, state = federation(cfg)
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        assert trainer_for(resolve(cfg).method, cfg, state, shards[0]) is None
    assert any("attention" in r.getMessage() and "one by one" in r.getMessage() for r in caplog.records)
    vec_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"engine": "vectorized"})})
    assert isinstance(trainer_for(resolve(vec_cfg).method, vec_cfg, state, shards[0]), ThreeFMTrainer)
