"""Every registered method honours the Method contract: init -> client update -> byte round trip
of state and updates -> aggregate -> predict, with the declared hooks in place."""

from __future__ import annotations

import pytest
import torch

from mmfl.engine import steps
from mmfl.io.codec import state_from_bytes, state_to_bytes, update_from_bytes, update_to_bytes
from mmfl.methods import get_method, method_names, parse_experiment
from mmfl.methods.base import Method
from tests.conftest import tiny_config_dict
from tests.helpers.image_text_fixtures import TINY_BACKBONE, write_food101

FOUNDATION = {"fedprime": {"pool_size": 4, "top_k": 2}, "fedavg_p": {"prompt_length": 2},
              "fedmvp": {"joint_dim": 16, "caption_tokens": 3, "diffusion_steps": 2, "synthetic_samples": 8}}


def _generators(tmp_path, name) -> dict:
    """FedMVP's default (generative) completion needs its two generators: tiny ones saved to disk."""
    if name != "fedmvp":
        return {}
    from tests.helpers.generative_fixtures import save_tiny_blip, save_tiny_text_to_image

    return {"caption_model": save_tiny_blip(tmp_path / "blip"), "image_model": save_tiny_text_to_image(tmp_path / "t2i")}


def _config(tmp_path, name):
    if name in FOUNDATION:
        food = write_food101(tmp_path / "food", {f"c{i}": 6 for i in range(3)})
        raw = tiny_config_dict(
            tmp_path, data={"name": "food101", "path": str(food), "image_text": {"image_size": 16, "max_text_len": 12}},
            partition={"scheme": "iid", "num_clients": 2, "min_client_size": 4},
            method={"name": name, "params": {"backbone": TINY_BACKBONE, "feature_cache": "memory", **FOUNDATION[name],
                                                 **_generators(tmp_path, name)}},
            train={"rounds": 1, "local_epochs": 1, "batch_size": 8, "lr": 0.01})
    else:
        raw = tiny_config_dict(tmp_path, method={"name": name}, train={"rounds": 1, "batch_size": 32})
    return parse_experiment(raw)


@pytest.mark.parametrize("name", method_names())
def test_method_runs_a_round_through_the_byte_format(tmp_path, name):
    cfg = _config(tmp_path, name)
    method = get_method(name)
    assert isinstance(method, Method) and method.name == name == cfg.method.name
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    state = state_from_bytes(*state_to_bytes(steps.init_state(cfg, data.spec)))
    assert state.round == 0 and state.meta["method"] == name
    clients = steps.sample_clients(cfg, 1)
    updates = steps.client_train(cfg, state, shards, clients)
    updates = [update_from_bytes(*update_to_bytes(u)) for u in updates]
    assert [u.client_id for u in updates] == clients
    assert all(not u.meta.get("failed") for u in updates), [u.meta for u in updates]
    assert all(u.metrics["local_steps"] >= 1 for u in updates)
    updates = [update_from_bytes(*update_to_bytes(u)) for u in steps.upload_prototypes(cfg, state, shards, updates)]
    new = steps.schedule(cfg, steps.aggregate(cfg, state, updates, expected_clients=clients))
    new = state_from_bytes(*state_to_bytes(new))
    assert new.round == 1 and new.meta["history"][-1]["clients"] == clients
    assert new.model_weights().keys() == state.model_weights().keys()
    assert any(not torch.equal(new.model_weights()[k], state.model_weights()[k]) for k in state.model_weights())
    ctx = steps.context(cfg, data.spec, new.round)
    model = method.load_model(new.model_weights(), ctx)
    test = data.test
    n = min(5, len(test))
    logits = method.predict(model, new, {k: v[:n] for k, v in test.inputs.items()}, test.present[:n], ctx)
    assert logits.shape == (n, data.spec.num_classes) and bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("name", method_names())
def test_hooks_are_declared_on_the_base_class(name):
    """Engines call only what Method declares; a method adds no undeclared hook of its own."""
    method = get_method(name)
    declared = {k for k in vars(Method) if not k.startswith("_")}
    for klass in type(method).__mro__:
        if klass is Method or not issubclass(klass, Method):
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") or not callable(value):
                continue
            hookish = attr in ("functional_penalty", "local_loss", "train_scheduled", "train_on_features")
            assert not hookish, f"{klass.__name__}.{attr}: an undeclared engine hook"
    assert {"penalty", "batch_loss", "local_step", "local_data", "train_local", "run_local", "vectorizable"} <= declared


def test_vectorizable_is_inherited():
    from mmfl.methods.fedavg import FedAvg

    class Sub(FedAvg):
        pass

    assert Sub.vectorizable is True and Sub().vectorizable
