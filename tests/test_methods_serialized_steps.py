"""The new methods run through the round steps with every hand-over serialised, as between pipeline pods."""

from __future__ import annotations

import pytest
import torch

from mmfl.engine import steps
from mmfl.io.codec import state_from_bytes, state_to_bytes, update_from_bytes, update_to_bytes
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def _ship_state(state):
    return state_from_bytes(*state_to_bytes(state))


def _ship_updates(updates):
    return [update_from_bytes(*update_to_bytes(u)) for u in updates]


def _round(cfg, state, shards, data, ship):
    clients = steps.sample_clients(cfg, state.round + 1)
    updates = steps.client_train(cfg, ship(state), shards, clients)
    if ship is _ship_state:
        updates = _ship_updates(updates)
    updates = steps.upload_prototypes(cfg, ship(state), shards, updates)
    if ship is _ship_state:
        updates = _ship_updates(updates)
    state = steps.aggregate(cfg, ship(state), updates)
    state = steps.schedule(cfg, ship(state))
    return ship(state), steps.evaluate(cfg, ship(state), data.test)


@pytest.mark.parametrize("method,params,rounds", [("pmcmfl", {}, 1), ("threefm", {"local_epochs": 1}, 1), ("flexmod", {}, 2)])
def test_serialised_steps_equal_in_process_steps(tmp_path, method, params, rounds):
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": method, "params": params}, train={"batch_size": 32}))
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    results = []
    for ship in (lambda s: s, _ship_state):
        state = steps.init_state(cfg, data.spec)
        for _ in range(rounds):
            state, ev = _round(cfg, state, shards, data, ship)
        results.append((state, ev))
    (a, ev_a), (b, ev_b) = results
    assert ev_a == ev_b
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
