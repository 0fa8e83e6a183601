"""FED-PRIME and FedMVP as KFP components: the experiment pipeline under kfp.local.

Each task runs in its own process (SubprocessRunner), reading and writing the round state in the
artifact store; the result must equal the in-process local engine's. The foundation models are
tiny random ViLT/CLIP configurations, so nothing is downloaded.
"""

from __future__ import annotations

import json
import pytest
import torch

from mmfl.io.layout import completed_rounds, load_round
from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from tests.helpers.image_text_fixtures import tiny_food101_runs
from tests.helpers.kfp_local import CPU, start_kfp_local

pytestmark = [pytest.mark.slow]


def _pipeline_equals_local_engine(tmp_path, monkeypatch, cfg, ref):
    """Run ``cfg`` as the kfp.local experiment pipeline and ``ref`` in the local engine; round 1 of
    both must match (metrics exactly, tensors to 1e-6). Returns the pipeline's round-1 state and store."""
    from pipelines.experiment import build_experiment_pipeline

    start_kfp_local(tmp_path, monkeypatch, {"HF_HUB_OFFLINE": "1"})
    build_experiment_pipeline(cfg, settings=CPU)(config_json=json.dumps(cfg.model_dump(mode="json")))
    run_experiment(ref, progress=False)

    exp_id = cfg.experiment_id()
    pipe_store, ref_store = LocalStore(tmp_path / "pipe"), LocalStore(tmp_path / "ref")
    assert completed_rounds(pipe_store, exp_id) == completed_rounds(ref_store, exp_id) == [0, 1]
    got, got_metrics = load_round(pipe_store, exp_id, 1)
    want, want_metrics = load_round(ref_store, exp_id, 1)
    assert got_metrics == want_metrics and set(got_metrics["eval"]) == {"full", "only:image", "only:text"}
    assert got.tensors.keys() == want.tensors.keys()
    for key, value in want.tensors.items():
        torch.testing.assert_close(got.tensors[key], value, atol=1e-6, rtol=0)
    assert got.meta.get("cka_weights") == want.meta.get("cka_weights")
    return got, pipe_store


@pytest.mark.parametrize("method,params", [("fedprime", {"pool_size": 4, "top_k": 2}), ("fedmvp", {"joint_dim": 16, "completion": "feature"})])
def test_foundation_method_runs_as_kfp_components(tmp_path, monkeypatch, method, params):
    got, _ = _pipeline_equals_local_engine(tmp_path, monkeypatch, *tiny_food101_runs(tmp_path, method, params, rounds=1))
    # only the trainable parts travelled: no frozen backbone weights in the round state
    assert not any("backbone" in k or "vilt" in k.lower() or "clip" in k.lower() for k in got.tensors)
    assert got.meta["communication"][-1]["bytes_up"] > 0


def test_generative_fedmvp_runs_as_kfp_components(tmp_path, monkeypatch):
    """A FedMVP round whose clients caption missing texts and draw missing images with tiny
    BLIP / text-to-image checkpoints loaded from disk in every task process; the server weighs
    clients on a probe generated from class-name prompts. Equal to the local engine."""
    from tests.helpers.generative_fixtures import tiny_cub_fedmvp_runs

    got, pipe_store = _pipeline_equals_local_engine(tmp_path, monkeypatch, *tiny_cub_fedmvp_runs(tmp_path, rounds=1))
    assert got.meta["cka_weights"][-1]["probe"] == "generated"
    # both generators ran in the pipeline's client tasks: generated rows sit in the pipeline's feature cache
    assert any(k.startswith("feature-cache/gen-") for k in pipe_store.list("feature-cache"))
