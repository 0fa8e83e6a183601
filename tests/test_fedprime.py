"""FED-PRIME and its FedAvg-P baseline end to end on a tiny random ViLT and the Food-101 fixture, offline."""

from __future__ import annotations

import pytest
import torch

from mmfl.engine import steps
from mmfl.errors import ConfigError
from mmfl.io.codec import state_from_bytes, state_to_bytes, update_from_bytes, update_to_bytes
from mmfl.io.store import LocalStore
from mmfl.local import run_experiment
from mmfl.methods import parse_experiment, resolve
from mmfl.models.backbones import load_vilt
from tests.conftest import tiny_config_dict
from tests import test_foundation_methods as foundation
from tests.test_foundation_methods import food_dir  # noqa: F401  (the Food-101 fixture)

PRIME = {"pool_size": 6, "top_k": 2, "match_steps": 10}
SECTIONS = {"missing": {"pattern": "mixed", "rate": 0.5},
            "train": {"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 0.05}}


def food_cfg(tmp_path, food_dir, method: str, params: dict | None = None, **sections):
    return foundation.food_cfg(tmp_path, food_dir, method, params, **{**SECTIONS, **sections})


def test_fedprime_round_personal_queries_and_matched_inter_pool(tmp_path, food_dir):
    cfg = food_cfg(tmp_path, food_dir, "fedprime", PRIME)
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    init = state.model_weights()
    assert init["inter.prompts"].shape == (6, 1, 32) and state.meta["inter_pool_sizes"] == [6]
    updates = steps.client_train(cfg, state, dict(enumerate(data.clients)), [0, 1, 2])
    new = steps.aggregate(cfg, state, updates)
    w = new.model_weights()
    # Pooler, classifier and intra prompts: sample-weighted FedAvg.
    sizes = torch.tensor([float(u.num_samples) for u in updates])
    for k in ("intra.prompts", "head.dense.weight", "head.classifier.3.bias"):
        mean = sum(s * u.model_weights()[k] for s, u in zip(sizes, updates)) / sizes.sum()
        assert torch.allclose(w[k], mean, atol=1e-6), k
    # Query projections: each client's own, kept for it; the global model keeps the initial ones.
    for u in updates:
        for k in ("intra.query.weight", "inter.query.weight"):
            assert torch.equal(new.tensors[f"client/{u.client_id}/{k}"], u.model_weights()[k])
            assert torch.equal(w[k], init[k])
    assert not torch.equal(new.tensors["client/0/inter.query.weight"], new.tensors["client/1/inter.query.weight"])
    method = resolve(cfg).method
    assert torch.equal(method.client_weights(new, 1)["inter.query.weight"], new.tensors["client/1/inter.query.weight"])
    # Only the inter prompts each client retrieved are matched; the pool takes the matching's size.
    used = [int(u.tensors["aux/inter_used"].sum()) for u in updates]
    assert all(2 <= n <= 6 for n in used)
    assert [u.metrics["inter_retrieved"] for u in updates] == used
    matching = new.meta["inter_matching"]
    assert sum(matching["clients"]) == sum(used)
    assert w["inter.prompts"].shape[0] == len(matching["clients"]) == new.meta["inter_pool_sizes"][-1]
    for cid, a in matching["assignments"].items():
        assert len(a) == used[int(cid)] and len(set(a)) == len(a)  # one-to-one per client
    # Round 2 loads a pool of the new size.
    again = steps.client_train(cfg, new, dict(enumerate(data.clients)), [0])
    assert again[0].model_weights()["inter.prompts"].shape == w["inter.prompts"].shape


def test_fedprime_trains_end_to_end_and_only_small_modules_travel(tmp_path, food_dir):
    cfg = food_cfg(tmp_path, food_dir, "fedprime", PRIME,
                   eval={"every": 2, "patterns": ["full", "only:image", "only:text"]})
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 2 and set(result.final) == {"full", "only:image", "only:text"}
    state = LocalStore(cfg.storage.root).get_state(f"{cfg.experiment_id()}/rounds/00002")
    assert len(state.meta["inter_pool_sizes"]) == 3
    model_bytes = sum(v.numel() * v.element_size() for k, v in state.tensors.items() if k.startswith("model/"))
    backbone = load_vilt(resolve(cfg).params.backbone)
    assert model_bytes * 10 < sum(p.numel() * p.element_size() for p in backbone.parameters())
    assert [c["round"] for c in state.meta["communication"]] == [1, 2]


def test_fedprime_through_serialised_steps_matches_local_engine(tmp_path, food_dir):
    """What a pipeline does: every step's inputs and outputs cross a safetensors+JSON boundary."""
    cfg = food_cfg(tmp_path, food_dir, "fedprime", PRIME, eval={"every": 2, "patterns": ["full"]})
    local = run_experiment(cfg, progress=False)
    data = steps.prepare_data(cfg)
    shards = dict(enumerate(data.clients))
    state = state_from_bytes(*state_to_bytes(steps.init_state(cfg, data.spec)))
    for r in (1, 2):
        clients = steps.sample_clients(cfg, r)
        updates = [update_from_bytes(*update_to_bytes(u)) for u in steps.client_train(cfg, state, shards, clients)]
        updates = steps.upload_prototypes(cfg, state, shards, updates)
        state = state_from_bytes(*state_to_bytes(steps.aggregate(cfg, state, updates)))
        state = steps.schedule(cfg, state)
    assert steps.evaluate(cfg, state, data.test) == local.final
    saved = LocalStore(cfg.storage.root).get_state(f"{cfg.experiment_id()}/rounds/00002")
    for k, v in saved.tensors.items():
        assert torch.equal(v, state.tensors[k]), k


def test_fedavg_p_trains_and_averages_three_prompt_sets(tmp_path, food_dir):
    cfg = food_cfg(tmp_path, food_dir, "fedavg_p", {"prompt_length": 4},
                   eval={"every": 2, "patterns": ["full", "only:image", "only:text"]})
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    prompts = state.model_weights()["prompts"]
    assert prompts.shape == (3, 2, 4, 32)  # complete / text missing / image missing x layers x tokens
    updates = steps.client_train(cfg, state, dict(enumerate(data.clients)), [0, 1, 2])
    new = steps.aggregate(cfg, state, updates)
    sizes = [float(u.num_samples) for u in updates]
    mean = sum(s * u.model_weights()["prompts"] for s, u in zip(sizes, updates)) / sum(sizes)
    assert torch.allclose(new.model_weights()["prompts"], mean, atol=1e-6)
    assert not any(k.startswith(("server/", "client/")) for k in new.tensors)
    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 2 and set(result.final) == {"full", "only:image", "only:text"}


def test_bad_params_are_reported(tmp_path, food_dir):
    with pytest.raises(ConfigError, match="top_k"):
        cfg = food_cfg(tmp_path, food_dir, "fedprime", {"pool_size": 2, "top_k": 3})
        steps.init_state(cfg, steps.prepare_data(cfg).spec)
    with pytest.raises(ConfigError, match="sigma_floor"):
        food_cfg(tmp_path, food_dir, "fedprime", {"sigma_floor": 1.5})
    with pytest.raises(ConfigError, match="image and one text"):
        cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "fedavg_p"}))
        steps.init_state(cfg, steps.prepare_data(cfg).spec)
