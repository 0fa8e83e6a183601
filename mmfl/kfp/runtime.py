"""What a pipeline task has to run on: its device and CPU threads, taken from the pod itself.

Every task calls ``setup_task(cfg)`` before it trains or evaluates:

- ``train.device: auto`` (the default) becomes ``cuda`` when torch sees a GPU, else ``cpu``;
- a task compiled as a GPU task (``MMFL_GPU_TASK=1``, set by ``pipelines/cluster.py``) that finds
  no CUDA device, or cannot run a kernel on it, stops with one clear error naming the image's driver
  floor instead of training on the node's CPU;
- ``train.threads`` unset -> torch's intra-op threads follow the container's CPU limit
  (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), not the node's core count.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

from mmfl.config import ExperimentConfig
from mmfl.engine import steps
from mmfl.errors import ConfigError

GPU_TASK_ENV = "MMFL_GPU_TASK"
# torch 2.13.0 from PyPI is built against CUDA 13.0 (cuda-toolkit 13.0.3 wheels), see docs/kubeflow.md
DRIVER_FLOOR = "NVIDIA driver >= 580 (CUDA 13) and a Turing or newer GPU (compute capability >= 7.5)"
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
    """A GPU task must see a working GPU: no CUDA device, a kernel that cannot run on it, or a config
    that pins the CPU, is one clear error naming the image's driver floor."""
    if os.environ.get(GPU_TASK_ENV) != "1":
        return
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    build = f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})"
    if not available:
        why = "; ".join(str(w.message).splitlines()[0] for w in caught)
        raise ConfigError(f"{GPU_TASK_ENV}=1: this task requests a GPU but {build} sees no CUDA device"
                          f"{f' ({why})' if why else ''}; the image needs {DRIVER_FLOOR}, "
                          "or compile with --gpus 0 to run on CPU nodes")
    if torch.version.cuda:  # one small kernel: a GPU generation the build has no kernels for fails here
        try:
            x = torch.arange(4, dtype=torch.float32, device="cuda")
            ok = float(x @ x) == 14.0
        except RuntimeError as exc:
            ok, why = False, str(exc).splitlines()[0]
        else:
            why = "a 4-element dot product gave a wrong result"
        if not ok:
            major, minor = torch.cuda.get_device_capability(0)
            raise ConfigError(f"{GPU_TASK_ENV}=1: {build} sees {torch.cuda.get_device_name(0)} (compute capability "
                              f"{major}.{minor}) but a kernel failed: {why}; the image needs {DRIVER_FLOOR}")
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
