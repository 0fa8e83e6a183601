"""The foundation-model methods through the pipeline's component glue, task by task, in-process.

Runs once the pipeline glue (``mmfl.kfp.component_io``) and its segment helper are present; the
state after every round must equal the local engine's bit for bit.
"""

from __future__ import annotations

import json

import pytest

from mmfl.config import parse_config
from mmfl.engine.local import run_experiment
from mmfl.io.store import LocalStore
from tests.conftest import tiny_config_dict
from tests.helpers.image_text_fixtures import write_food101

pytest.importorskip("mmfl.kfp.component_io")
segments = pytest.importorskip("tests.test_kfp_segments")

BACKBONE = {"image_size": 16, "patch_size": 8, "max_text_len": 12}


@pytest.mark.parametrize("method,params", [("fedprime", {"pool_size": 4}), ("fedavg_prompts", {}),
                                           ("fedmvp", {"joint_dim": 16})])
def test_foundation_method_through_pipeline_glue(tmp_path, method, params):
    food = write_food101(tmp_path / "food", {f"c{i}": 8 for i in range(3)})
    raw = tiny_config_dict(
        tmp_path,
        data={"name": "food101", "path": str(food), "image_text": {"image_size": 16, "max_text_len": 12}},
        partition={"scheme": "iid", "num_clients": 2, "min_client_size": 4},
        method={"name": method, "params": {"backbone": BACKBONE, **params}},
        train={"rounds": 2, "local_epochs": 1, "batch_size": 8, "lr": 0.01},
    )
    cfg = parse_config({**raw, "storage": {"kind": "local", "root": str(tmp_path / "pipe")}})
    ref = parse_config({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}})
    run_experiment(ref, progress=False)
    out = segments.run_segment(json.dumps(cfg.model_dump(mode="json")), 2, tmp_path / "seg")
    assert out[1]["meta"]["round"] == 2
    segments._assert_same_rounds(LocalStore(tmp_path / "pipe"), LocalStore(tmp_path / "ref"), cfg.experiment_id())
