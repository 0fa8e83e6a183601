"""``train.engine: auto`` (the default) vectorizes where that reproduces the loop and says once when it does not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mmfl.engine import steps
from mmfl.engine.vectorized.stack import StackView
from mmfl.methods import parse_experiment
from mmfl.methods.fedavg import FedAvg
from mmfl.methods.registry import METHODS
from tests.conftest import tiny_config_dict
from tests.helpers.engines import max_diff

TOL = 1e-6


class OwnStepFedAvg(FedAvg):
    """A method with its own local step: the vectorized engine does not reproduce it."""

    def local_step(self, model, batch, optimizer, state, ctx, anchor):
        return super().local_step(model, batch, optimizer, state, ctx, anchor)


class ScaledLossFedAvg(FedAvg):
    """A method with its own batch loss: the generic method trainer reproduces it."""

    def batch_loss(self, model, batch, state, ctx):
        return 2.0 * super().batch_loss(model, batch, state, ctx)


def _round(tmp_path: Path, engine: str | None, method: str = "fedavg"):
    train = {"local_epochs": 2, "momentum": 0.9, "vector_chunk": 3}
    if engine is not None:
        train["engine"] = engine
    cfg = parse_experiment(tiny_config_dict(tmp_path, train=train, method={"name": method}))
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    state = steps.init_state(cfg, data.spec)
    ids = steps.sample_clients(cfg, 1)
    updates = steps.client_train(cfg, state, shards, ids)
    return cfg, state, updates, steps.aggregate(cfg, state, updates)



def test_auto_is_the_default_and_vectorizes_fedavg_like_the_loop(tmp_path):
    cfg, state, auto, agg_auto = _round(tmp_path / "auto", None)
    assert cfg.train.engine == "auto"
    assert all(isinstance(u.tensors, StackView) for u in auto)  # trained together, stacked
    _, _, loop, agg_loop = _round(tmp_path / "loop", "loop")
    assert not any(isinstance(u.tensors, StackView) for u in loop)
    for u, v in zip(loop, auto):
        assert max_diff(u.tensors, dict(v.tensors)) < TOL
    assert max_diff(agg_loop.tensors, agg_auto.tensors) < TOL
    assert max_diff(agg_loop.tensors, state.tensors) > 1e-3  # the round trained


def test_auto_trains_a_method_with_its_own_loss_together_like_the_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "scaled_loss_fedavg", f"{__name__}:ScaledLossFedAvg")
    _, state, auto, agg_auto = _round(tmp_path / "a", "auto", "scaled_loss_fedavg")
    assert all(isinstance(u.tensors, StackView) for u in auto)
    _, _, loop, agg_loop = _round(tmp_path / "l", "loop", "scaled_loss_fedavg")
    for u, v in zip(loop, auto):
        assert max_diff(u.tensors, dict(v.tensors)) < TOL
        assert v.metrics["train_loss"] == pytest.approx(u.metrics["train_loss"], rel=1e-6)
    assert max_diff(agg_loop.tensors, agg_auto.tensors) < TOL
    assert max_diff(agg_loop.tensors, state.tensors) > 1e-3


def test_auto_uses_the_loop_for_a_method_it_cannot_vectorize_said_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(METHODS, "own_step_fedavg", f"{__name__}:OwnStepFedAvg")
    with caplog.at_level(logging.DEBUG, logger="mmfl.engine.vectorized"):
        _, state, auto, agg_auto = _round(tmp_path / "a1", "auto", "own_step_fedavg")
        _round(tmp_path / "a2", "auto", "own_step_fedavg")  # a second round: no second line
    said = [r for r in caplog.records if r.levelno >= logging.INFO and "train.engine auto" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "training clients one by one (the loop)" in said[0].getMessage()
    assert "overrides local_step" in said[0].getMessage()
    assert not any(isinstance(u.tensors, StackView) for u in auto)
    _, _, loop, agg_loop = _round(tmp_path / "l", "loop", "own_step_fedavg")
    for u, v in zip(loop, auto):
        assert max_diff(u.tensors, v.tensors) == 0.0
    assert max_diff(agg_loop.tensors, agg_auto.tensors) < TOL
    assert max_diff(agg_loop.tensors, state.tensors) > 1e-3


class InexactFedAvg(FedAvg):
    """FedAvg's own training hooks, but declared inexact when trained together in this setting."""

    def inexact_vectorized(self, ctx):
        return "inexact-fedavg: clients trained together differ from the loop here"


def test_auto_uses_the_loop_when_a_method_with_fedavgs_hooks_says_it_is_inexact(tmp_path, monkeypatch, caplog):
    """``inexact_vectorized`` is honoured by the plain trainer's path too (not only the method trainer's)."""
    monkeypatch.setitem(METHODS, "inexact_fedavg", f"{__name__}:InexactFedAvg")
    with caplog.at_level(logging.INFO, logger="mmfl.engine.vectorized"):
        _, _, auto, _ = _round(tmp_path / "a", "auto", "inexact_fedavg")
    assert not any(isinstance(u.tensors, StackView) for u in auto)
    assert any("one by one" in r.getMessage() and "inexact-fedavg" in r.getMessage() for r in caplog.records)
    _, _, vec, _ = _round(tmp_path / "v", "vectorized", "inexact_fedavg")  # asked for explicitly: together
    assert all(isinstance(u.tensors, StackView) for u in vec)
