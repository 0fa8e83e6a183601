"""Every task resolves its device and threads from the pod: CUDA when a GPU task has one, a clear
error when it has none, torch threads from the container's CPU limit (cgroup)."""

from __future__ import annotations

import json

import pytest
import torch

from mmfl.errors import ConfigError
from mmfl.kfp import tasks
from mmfl.kfp.runtime import cgroup_cpus, setup_task, task_threads
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict


def _cgroup(tmp_path, v2: str | None = None, quota: int | None = None, period: int = 100000):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if quota is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_threads_follow_the_container_cpu_limit(tmp_path):
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    (tmp_path / "a").mkdir()
    assert cgroup_cpus(_cgroup(tmp_path / "a", "250000 100000")) == 2.5
    assert task_threads(cfg, tmp_path / "a") == 2
    (tmp_path / "b").mkdir()
    assert cgroup_cpus(_cgroup(tmp_path / "b", "max 100000")) is None and task_threads(cfg, tmp_path / "b") is None
    (tmp_path / "c").mkdir()
    assert task_threads(cfg, _cgroup(tmp_path / "c", quota=50000)) == 1  # half a core (cgroup v1) -> one thread
    pinned = parse_experiment(tiny_config_dict(tmp_path, train={"threads": 3}))
    assert task_threads(pinned, tmp_path / "a") == 3


def test_device_auto_resolves_to_cuda_when_the_pod_has_one(tmp_path, monkeypatch):
    cfg = parse_experiment(tiny_config_dict(tmp_path))
    assert cfg.train.device == "auto"
    monkeypatch.setenv("MMFL_GPU_TASK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (tmp_path / "cg").mkdir()
    before = torch.get_num_threads()
    try:
        setup_task(cfg, _cgroup(tmp_path / "cg", "100000 100000"))
        assert cfg.train.device == "cuda" and cfg.train.threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_gpu_task_without_cuda_stops_with_a_clear_error(tmp_path, monkeypatch):
    """Through a task entry point, with CUDA absent (as on this machine, or mocked where present)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MMFL_GPU_TASK", "1")
    cfg = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2}))
    start, remaining, _ = tasks.prepare_task(json.dumps(cfg.model_dump(mode="json")), str(tmp_path / "ckpt"))
    assert (start, remaining) == (0, 2)
    with pytest.raises(ConfigError, match=r"MMFL_GPU_TASK=1: this task requests a GPU but torch .* sees no CUDA device"):
        tasks.train_rounds_task(json.dumps(cfg.model_dump(mode="json")), 0, 0, 2, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        tasks.client_train_task(json.dumps(cfg.model_dump(mode="json")), 0, 0, str(tmp_path / "up"))
    # a config that pins the CPU in a GPU task is refused as well (it would hold the GPU idle)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu = parse_experiment(tiny_config_dict(tmp_path, train={"rounds": 2, "device": "cpu"}))
    with pytest.raises(ConfigError, match=r"train.device = 'cpu' in a GPU task"):
        setup_task(cpu)
