"""Running pipelines with kfp.local: each task in its own process, in this Python environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start_kfp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> None:
    """kfp.local with the SubprocessRunner; task processes see this tree and ``env`` (as from a Secret)."""
    from kfp import local

    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
