"""FED-PRIME (resume) and FedMVP end to end on tiny frozen transformers, offline."""

from __future__ import annotations

import math

import pytest
import torch

from mmfl.engine import steps
from mmfl.local import run_experiment
from mmfl.io.codec import state_from_bytes, state_to_bytes, update_from_bytes, update_to_bytes
from mmfl.io.store import LocalStore
from mmfl.methods import resolve
from mmfl.models.backbones import load_vilt
from mmfl.engine.resources import _RESOURCES as _CACHES
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.image_text_fixtures import write_food101

BACKBONE = {"image_size": 16, "patch_size": 8, "max_text_len": 12, "hidden": 32, "layers": 2}


@pytest.fixture(scope="module")
def food_dir(tmp_path_factory):
    return write_food101(tmp_path_factory.mktemp("food"), {f"c{i}": 12 for i in range(4)})


def food_cfg(tmp_path, food_dir, method: str, params: dict | None = None, **sections):
    sections = {
        "data": {"name": "food101", "path": str(food_dir), "image_text": {"image_size": 16, "max_text_len": 12}},
        "partition": {"scheme": "iid", "num_clients": 3, "min_client_size": 4},
        "method": {"name": method, "params": {"backbone": BACKBONE, **(params or {})}},
        "train": {"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 0.01},
        **sections,
    }
    d = tiny_config_dict(tmp_path, **sections)
    return parse_experiment(d)


def _history_ok(result, rounds: int):
    assert result.rounds_done == rounds and result.final is not None
    assert set(result.final) == {"full", "only:image", "only:text"}
    for vals in result.final.values():
        assert 0.0 <= vals["acc"] <= 1.0


def test_fedprime_resume_is_identical(tmp_path, food_dir):
    cfg = food_cfg(tmp_path / "a", food_dir, "fedprime", {"pool_size": 4, "top_k": 2, "match_steps": 5})
    full = run_experiment(cfg, progress=False)
    cfg_b = food_cfg(tmp_path / "b", food_dir, "fedprime", {"pool_size": 4, "top_k": 2, "match_steps": 5})
    run_experiment(cfg_b, progress=False, stop_after=1)
    _CACHES.clear()  # a fresh process: the feature cache is read back from the store
    resumed = run_experiment(cfg_b, progress=False)
    assert resumed.resumed_from == 1 and resumed.final == full.final


def test_fedmvp_clip_trains_with_cka_weights(tmp_path, food_dir):
    cfg = food_cfg(tmp_path, food_dir, "fedmvp", {"joint_dim": 16, "synthetic_samples": 32, "completion": "feature"},
                   missing={"pattern": "mixed", "rate": 0.5})
    result = run_experiment(cfg, progress=False)
    _history_ok(result, 2)
    state = LocalStore(cfg.storage.root).get_state(f"{cfg.experiment_id()}/rounds/00002")
    assert all(k.startswith(("model/proj", "model/complete", "model/encoder", "model/head", "model/cls",
                             "model/modality_embed", "model/to_frozen")) for k in state.tensors)
    joint_bytes = sum(v.numel() * v.element_size() for k, v in state.tensors.items() if k.startswith("model/"))
    assert state.meta["communication"][-1]["bytes_up"] == 3 * joint_bytes
    for entry in state.meta["cka_weights"]:
        assert math.isclose(sum(entry["weights"]), 1.0, rel_tol=1e-6) and min(entry["weights"]) > 0


def test_fedmvp_on_precomputed_features_and_losses_reported(tmp_path):
    """Vector modalities pass through as already-encoded features (no CLIP needed)."""
    cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "fedmvp", "params": {"joint_dim": 16, "completion": "feature"}},
                                        train={"rounds": 2, "local_epochs": 2, "batch_size": 16, "lr": 0.01}))
    data = steps.prepare_data(cfg)
    state = steps.init_state(cfg, data.spec)
    updates = steps.client_train(cfg, state, dict(enumerate(data.clients)), [0, 1])
    for u in updates:
        for k in ("ce", "mcm", "ram", "completion"):
            assert math.isfinite(u.metrics[k])
        assert u.metrics["mcm"] > 0 and u.metrics["ram"] > 0
    result = run_experiment(cfg, progress=False)
    assert result.final["full"]["acc"] > 1.0 / 4 + 0.1  # synthetic classes are learnable in 2 rounds


def test_bad_method_params_are_reported(tmp_path, food_dir):
    from mmfl.errors import ConfigError

    with pytest.raises(ConfigError, match="image_model = None: completion 'text_to_image'"):
        cfg = food_cfg(tmp_path, food_dir, "fedmvp", {"completion": "text_to_image"})
        steps.init_state(cfg, steps.prepare_data(cfg).spec)
    with pytest.raises(ConfigError, match="caption_model = None: completion 'generative'"):  # the paper's default
        cfg = food_cfg(tmp_path, food_dir, "fedmvp", {})
        steps.init_state(cfg, steps.prepare_data(cfg).spec)
    with pytest.raises(ConfigError, match="one image and one token-id text"):
        cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "fedmvp",
                                                                  "params": {"caption_model": "x", "image_model": "y"}}))
        steps.init_state(cfg, steps.prepare_data(cfg).spec)
    with pytest.raises(ConfigError, match="image and one text"):
        cfg = parse_experiment(tiny_config_dict(tmp_path, method={"name": "fedprime"}))
        steps.init_state(cfg, steps.prepare_data(cfg).spec)
