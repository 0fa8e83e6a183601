"""With train.engine: vectorized and a method the engine does not reproduce, clients train one by
one exactly as with the loop engine, so one failing client fails alone."""

from __future__ import annotations

import logging

import pytest

from mmfl.engine import robust, steps
from mmfl.methods import parse_experiment
from mmfl.methods.pmcmfl import PmcmFL
from mmfl.methods.registry import METHODS
from tests.conftest import tiny_config_dict


class OwnStepPmcmFL(PmcmFL):
    """PmcmFL with a local step of its own, which the vectorized engine does not reproduce."""

    def local_step(self, model, batch, optimizer, state, ctx, anchor):
        return super().local_step(model, batch, optimizer, state, ctx, anchor)


@pytest.fixture(autouse=True)
def _own_step_method(monkeypatch):
    monkeypatch.setitem(METHODS, "own_step_pmcmfl", f"{__name__}:OwnStepPmcmFL")


def _cfg(tmp_path, engine, method="own_step_pmcmfl"):
    return parse_experiment(tiny_config_dict(
        tmp_path, method={"name": method}, train={"rounds": 1, "batch_size": 32, "engine": engine},
        reliability={"fault_injection": [{"round": 1, "client": 2, "mode": "raise"}]}))


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
def test_one_failing_client_fails_alone_with_the_loop_fallback(tmp_path, engine, caplog):
    cfg = _cfg(tmp_path / engine, engine)
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    clients = steps.sample_clients(cfg, 1)
    with caplog.at_level(logging.INFO):
        updates = steps.client_train(cfg, state, dict(enumerate(data.clients)), clients)
    failed = [u.client_id for u in updates if robust.is_failed(u)]
    assert failed == [2]
    assert len(updates) == len(clients)
    if engine == "vectorized":
        assert "training clients one by one" in caplog.text


def test_vectorized_and_loop_fallback_give_the_same_updates(tmp_path):
    loop, vec = _cfg(tmp_path / "a", "loop"), _cfg(tmp_path / "b", "vectorized")
    out = []
    for cfg in (loop, vec):
        data = steps.prepare_data(cfg)
        state = steps.init_state(cfg, data.spec)
        out.append(steps.client_train(cfg, state, dict(enumerate(data.clients)), steps.sample_clients(cfg, 1)))
    for a, b in zip(*out):
        assert a.client_id == b.client_id and a.metrics == b.metrics
