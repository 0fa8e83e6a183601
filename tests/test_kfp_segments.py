"""Segment semantics of the pipeline glue, run in-process (no kfp, no subprocesses).

The pipeline and the local engine share the checkpoint layout, so either can resume the other;
a task re-run (KFP retry) finds its output and returns it unchanged; rounds past the end do nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmfl.io.layout import completed_rounds, load_round
from mmfl.local import run_experiment
from mmfl.errors import ConfigError
from mmfl.io.store import LocalStore
from mmfl.kfp import tasks as io
from pipelines import segments
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def run_segment(config_json: str, rounds: int, workdir: Path) -> list[dict]:
    """What the compiled experiment pipeline does, task by task, with files as artifacts."""
    workdir.mkdir(parents=True, exist_ok=True)
    start, _, _ = io.prepare_task(config_json, str(workdir / "checkpoint"))
    out = []
    for k in range(rounds):
        io.client_train_task(config_json, start, k, str(workdir / f"updates-{k}"))
        io.upload_prototypes_task(config_json, start, k, str(workdir / f"updates-{k}"), str(workdir / f"uploads-{k}"))
        io.aggregate_task(config_json, start, k, [str(workdir / f"uploads-{k}")], str(workdir / f"agg-{k}"))
        io.schedule_task(config_json, start, k, str(workdir / f"agg-{k}"), str(workdir / f"sched-{k}"))
        meta, metrics = io.evaluate_task(config_json, start, k, str(workdir / f"sched-{k}"), str(workdir / f"ckpt-{k}"))
        out.append({"meta": meta, "metrics": metrics})
    return out


def _assert_same_rounds(a: LocalStore, b: LocalStore, exp_id: str, atol: float = 0.0) -> None:
    """Same rounds, metrics and metadata in both stores; tensors equal (within ``atol``)."""
    assert completed_rounds(a, exp_id) == completed_rounds(b, exp_id)
    for r in completed_rounds(a, exp_id):
        sa, ma = load_round(a, exp_id, r)
        sb, mb = load_round(b, exp_id, r)
        assert ma == mb and sa.meta == sb.meta
        assert sa.tensors.keys() == sb.tensors.keys()
        for key, value in sa.tensors.items():
            assert torch.allclose(value, sb.tensors[key], rtol=0, atol=atol), (r, key)


def test_segment_resumes_local_engine_and_chains(tmp_path):
    raw = tiny_config_dict(tmp_path, train={"rounds": 3})
    cfg = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "mixed")}})
    ref_cfg = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}})
    exp_id = cfg.experiment_id()
    run_experiment(ref_cfg, progress=False)

    # the local engine does round 1, then a one-round and a two-round segment finish the experiment
    run_experiment(cfg, progress=False, stop_after=1)
    config_json = json.dumps(cfg.model_dump(mode="json"))
    first = run_segment(config_json, 1, tmp_path / "seg1")
    assert first[0]["meta"]["round"] == 2 and "acc_full" in first[0]["metrics"]
    second = run_segment(config_json, 2, tmp_path / "seg2")
    assert second[0]["meta"]["round"] == 3
    assert second[1]["meta"]["skipped"] == "beyond" and second[1]["metrics"] == {}
    _assert_same_rounds(LocalStore(tmp_path / "mixed"), LocalStore(tmp_path / "ref"), exp_id)

    # the finished experiment: a further segment (or a retried task) changes nothing
    store = LocalStore(tmp_path / "mixed")
    before = {k: store.get_bytes(k) for k in store.list(exp_id)}
    again = run_segment(config_json, 1, tmp_path / "seg3")
    assert again[0]["meta"]["skipped"] == "beyond"
    assert {k: store.get_bytes(k) for k in store.list(exp_id)} == before


def test_retried_task_reuses_its_output(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 1}))
    config_json = json.dumps(cfg.model_dump(mode="json"))
    start, _, _ = io.prepare_task(config_json, str(tmp_path / "ckpt"))
    m1 = io.client_train_task(config_json, start, 0, str(tmp_path / "u1"))
    store, exp_id = LocalStore(cfg.storage.root), cfg.experiment_id()
    key = f"{exp_id}/rounds/00001/updates/client_00000/update.safetensors"
    stamp = (store.root / key).stat().st_mtime_ns
    m2 = io.client_train_task(config_json, start, 0, str(tmp_path / "u2"))
    assert m1 == m2 and (store.root / key).stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "u1").read_text())["clients"] == [0, 1, 2, 3]


def test_per_client_slot_and_fan_in_equal_one_task(tmp_path):
    """Fan-out (one task per sampled client) followed by fan-in gives the same aggregate."""
    a = parse_experiment(tiny_config_dict(tmp_path / "a", train={"rounds": 1}))
    b = parse_experiment(tiny_config_dict(tmp_path / "b", train={"rounds": 1}))
    ja, jb = (json.dumps(c.model_dump(mode="json")) for c in (a, b))
    io.prepare_task(ja, str(tmp_path / "a-ck"))
    io.prepare_task(jb, str(tmp_path / "b-ck"))
    io.client_train_task(ja, 0, 0, str(tmp_path / "a-up"))
    io.aggregate_task(ja, 0, 0, [str(tmp_path / "a-up")], str(tmp_path / "a-agg"))
    slots = [str(tmp_path / f"b-up{i}") for i in range(4)]
    for i, path in reversed(list(enumerate(slots))):  # inside a loop the round comes from the state manifest
        io.client_train_task(jb, -1, 0, path, client_slot=i, state_manifest=str(tmp_path / "b-ck"))
    io.aggregate_task(jb, 0, 0, slots, str(tmp_path / "b-agg"))
    sa = LocalStore(a.storage.root).get_state(f"{a.experiment_id()}/rounds/00001/steps/aggregate")
    sb = LocalStore(b.storage.root).get_state(f"{b.experiment_id()}/rounds/00001/steps/aggregate")
    for key, value in sa.tensors.items():
        torch.testing.assert_close(sb.tensors[key], value, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="client_slot = 9"):
        io.client_train_task(jb, 0, 0, str(tmp_path / "bad"), client_slot=9)


def test_segment_length_fits_task_budget(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 100}))
    assert segments.steps_per_round(cfg) == 3  # fedavg: client_train, aggregate, evaluate
    assert segments.segment_rounds(cfg, max_tasks=40) == 12  # prepare and the chain task take two
    assert segments.segments_needed(cfg, 12) == 9 and segments.segments_needed(cfg, 12, done=96) == 1
    assert segments.steps_per_round(cfg, fan_out=True) == 4 + 2
    with pytest.raises(ConfigError, match="max_tasks = 4"):
        segments.segment_rounds(cfg, max_tasks=4)
    # K rounds per task: 38 tasks of K rounds fit a run; the cost counts only tasks that start
    assert segments.segment_rounds(cfg, max_tasks=40, rounds_per_task=10) == 100
    cost = segments.experiment_cost(cfg, rounds_per_task=10)
    assert (cost.runs, cost.tasks) == (1, 1 + 10)
    assert segments.experiment_cost(cfg, rounds_per_task=1, done=96).tasks == 1 + 4 * 3
    with pytest.raises(ConfigError, match="--fan-out with rounds_per_task = 2"):
        segments.segment_rounds(cfg, fan_out=True, rounds_per_task=2)
    with pytest.raises(ConfigError, match="config_json"):
        io.load_cfg("{not json")


def test_prototype_and_schedule_steps_match_local_engine(tmp_path, monkeypatch):
    from mmfl.methods import registry

    monkeypatch.setitem(registry.METHODS, "fullsteps", "tests.helpers.fullstep_method:FullSteps")
    raw = tiny_config_dict(tmp_path, method={"name": "fullsteps"}, train={"rounds": 2})
    cfg = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "pipe")}})
    ref = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}})
    run_experiment(ref, progress=False)
    run_segment(json.dumps(cfg.model_dump(mode="json")), 2, tmp_path / "seg")
    exp_id = cfg.experiment_id()
    _assert_same_rounds(LocalStore(tmp_path / "pipe"), LocalStore(tmp_path / "ref"), exp_id)
    state, _ = load_round(LocalStore(tmp_path / "pipe"), exp_id, 2)
    assert state.meta["schedule"]["round"] == 2 and state.tensors["server/class_counts"].sum() > 0
    store = LocalStore(tmp_path / "pipe")
    upload = store.get_update(f"{exp_id}/rounds/00002/uploads/client_00000")
    assert "proto/class_counts" in upload.tensors
    assert store.exists(f"{exp_id}/rounds/00002/steps/schedule/state.json")


def test_vectorized_engine_in_the_pipeline_glue_matches_the_local_engine(tmp_path):
    # The client-training task writes the vectorized engine's stacked updates as artifacts; the
    # aggregate task averages them from the store, the local engine from the stacks in memory.
    raw = tiny_config_dict(tmp_path, train={"rounds": 2, "engine": "vectorized", "vector_chunk": 3, "momentum": 0.9})
    cfg = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "glue")}})
    ref_cfg = parse_experiment({**raw, "storage": {"kind": "local", "root": str(tmp_path / "ref")}})
    run_experiment(ref_cfg, progress=False)
    run_segment(json.dumps(cfg.model_dump(mode="json")), 2, tmp_path / "seg")
    exp_id = cfg.experiment_id()
    a = LocalStore(tmp_path / "glue")
    assert completed_rounds(a, exp_id) == [0, 1, 2]
    _assert_same_rounds(a, LocalStore(tmp_path / "ref"), exp_id, atol=1e-6)
    first, last = load_round(a, exp_id, 0)[0].tensors, load_round(a, exp_id, 2)[0].tensors
    assert max(float((last[k] - first[k]).abs().max()) for k in first if k.startswith("model/")) > 1e-3
