"""The foundation-model methods through the pipeline's component glue, task by task, in-process.

Runs once the pipeline glue (``mmfl.kfp.tasks``) and its segment helper are present; the
state after every round must equal the local engine's bit for bit.
"""

from __future__ import annotations

import json

import pytest

from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from tests.helpers.image_text_fixtures import tiny_food101_runs

from tests import test_kfp_segments as segments


@pytest.mark.parametrize("method,params", [("fedprime", {"pool_size": 4, "top_k": 2}), ("fedavg_p", {"prompt_length": 2}),
                                           ("fedmvp", {"joint_dim": 16, "completion": "feature"})])
def test_foundation_method_through_pipeline_glue(tmp_path, method, params):
    cfg, ref = tiny_food101_runs(tmp_path, method, params, rounds=2)
    run_experiment(ref, progress=False)
    out = segments.run_segment(json.dumps(cfg.model_dump(mode="json")), 2, tmp_path / "seg")
    assert out[1]["meta"]["round"] == 2
    segments._assert_same_rounds(LocalStore(tmp_path / "pipe"), LocalStore(tmp_path / "ref"), cfg.experiment_id())
