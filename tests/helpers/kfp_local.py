"""Running pipelines with kfp.local: each task in its own process, in this Python environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.cluster import ClusterSettings

ROOT = Path(__file__).resolve().parents[2]

# kfp.local has no GPUs: pipelines built for GPU nodes stop at their tasks' CUDA check here
CPU = ClusterSettings(gpus=0)


def start_kfp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> None:
    """kfp.local with the SubprocessRunner; task processes see this tree and ``env`` (as from a Secret)."""
    from kfp import local

    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
