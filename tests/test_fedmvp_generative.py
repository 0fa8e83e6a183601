"""FedMVP with pre-trained generative completion (tiny offline BLIP and text-to-image) on a tiny CUB-200."""

from __future__ import annotations

import math

import torch

from mmfl.engine import steps
from mmfl.io.store import LocalStore
from mmfl.local import run_experiment
from mmfl.methods import get_method
from tests.helpers.generative_fixtures import tiny_cub_fedmvp_runs


def test_generative_fedmvp_completes_both_modalities_and_weighs_on_a_generated_probe(tmp_path):
    _, cfg = tiny_cub_fedmvp_runs(tmp_path, rounds=1)
    data = steps.prepare_data(cfg)
    assert data.spec.class_names == ("black footed albatross", "laysan albatross", "sooty albatross")
    shard = data.clients[0]
    missing_image, missing_text = (~shard.present[:, 0]).sum(), (~shard.present[:, 1]).sum()
    assert missing_image > 0 and missing_text > 0
    feats, present = get_method("fedmvp").prepared(shard.inputs, shard.present, steps.context(cfg, data.spec, 1, 0),
                                                   labels=shard.labels)
    assert present.all() and feats["f/image"].shape[0] == len(shard)

    result = run_experiment(cfg, progress=False)
    assert result.rounds_done == 1 and set(result.final) == {"full", "only:image", "only:text"}
    assert all(math.isfinite(v["acc"]) for v in result.final.values())
    state = LocalStore(cfg.storage.root).get_state(f"{cfg.experiment_id()}/rounds/00001")
    entry = state.meta["cka_weights"][-1]
    assert entry["probe"] == "generated" and math.isclose(sum(entry["weights"]), 1.0, rel_tol=1e-6)
    assert not any(k.startswith("model/complete") for k in state.tensors)  # no translator: everything is generated
    assert any(k.startswith("model/to_frozen") for k in state.tensors)


def test_generated_probe_differs_from_heldout_probe(tmp_path):
    _, cfg = tiny_cub_fedmvp_runs(tmp_path, rounds=1)
    _, heldout_cfg = tiny_cub_fedmvp_runs(tmp_path / "heldout", rounds=1, probe="heldout")
    spec, method = steps.prepare_data(cfg).spec, get_method("fedmvp")
    generated = method.probe_features(steps.context(cfg, spec, 1))
    heldout = method.probe_features(steps.context(heldout_cfg, spec, 1))
    assert generated["f/image"].shape == (12, 32) and heldout["f/image"].shape[0] == 6  # the 6 test samples
    assert not torch.allclose(generated["f/image"][:6], heldout["f/image"])
    again = method.probe_features(steps.context(cfg, spec, 2))  # the same probe in every round
    torch.testing.assert_close(again["f/image"], generated["f/image"])
