"""What a pipeline task has to run on: its device and CPU threads, taken from the pod itself.

Every task calls ``setup_task(cfg)`` before it trains or evaluates:

- ``train.device: auto`` (the default) becomes ``cuda`` when torch sees a GPU, else ``cpu``;
- a task compiled as a GPU task (``MMFL_GPU_TASK=1``, set by ``pipelines/cluster.py``) that finds
  no CUDA device stops with one clear error instead of training on the node's CPU;
- ``train.threads`` unset -> torch's intra-op threads follow the container's CPU limit
  (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), not the node's core count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mmfl.config import ExperimentConfig
from mmfl.engine import steps
from mmfl.errors import ConfigError

GPU_TASK_ENV = "MMFL_GPU_TASK"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpus(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU limit in cores (``cpu.max`` quota / period), or None when unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def task_threads(cfg: ExperimentConfig, root: Path = CGROUP_ROOT) -> int | None:
    """``train.threads`` if set, else the CPU limit rounded down (at least 1), else None (torch's default)."""
    if cfg.train.threads is not None:
        return cfg.train.threads
    cpus = cgroup_cpus(root)
    return None if cpus is None else max(1, math.floor(cpus))


def require_gpu(cfg: ExperimentConfig) -> None:
    """A GPU task must see a GPU: no CUDA device, or a config that pins the CPU, is one clear error."""
    if os.environ.get(GPU_TASK_ENV) != "1":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{GPU_TASK_ENV}=1: this task requests a GPU but torch {torch.__version__} "
                          f"(CUDA build {torch.version.cuda or 'none'}) sees no CUDA device; check the node's driver "
                          "and the image, or compile with --gpus 0 to run on CPU nodes")
    if cfg.train.device.startswith("cpu"):
        raise ConfigError(f"train.device = {cfg.train.device!r} in a GPU task: it would hold a GPU and train on "
                          "the CPU; use train.device=auto (or cuda), or compile with --gpus 0")


def setup_task(cfg: ExperimentConfig, root: Path = CGROUP_ROOT) -> None:
    """Device and threads of this task from what the pod has, then the config's execution settings."""
    require_gpu(cfg)
    threads = task_threads(cfg, root)
    if threads is not None and cfg.train.threads is None:
        cfg.train.threads = threads
    steps.apply_execution_settings(cfg)
