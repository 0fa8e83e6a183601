"""Run ``python -m mmfl run`` as a real process, wait for a checkpoint, compare finished runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmfl.io.layout import round_prefix
from mmfl.io.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]


def start_run(workdir: Path, raw: dict, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``mmfl run`` on the config ``raw`` in a child process (stdout/stderr captured)."""
    path = workdir / "experiment.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "mmfl", "run", str(path), "--no-progress"], cwd=workdir,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(done: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    """Poll ``done()`` every 10 ms while ``proc`` runs; fail with its stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"run exited with {proc.returncode} before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.01)


def assert_same_rounds(store: ArtifactStore, reference: ArtifactStore, exp_id: str, rounds: int) -> None:
    """Bit-identical state tensors, state metadata and metrics.json for rounds 0..rounds."""
    for r in range(rounds + 1):
        prefix = round_prefix(exp_id, r)
        got, want = store.get_state(prefix), reference.get_state(prefix)
        assert got.round == want.round == r
        assert got.tensors.keys() == want.tensors.keys()
        for key in want.tensors:
            assert torch.equal(got.tensors[key], want.tensors[key]), f"round {r}: {key} differs"
        assert got.meta == want.meta
        assert store.get_json(f"{prefix}/metrics.json") == reference.get_json(f"{prefix}/metrics.json")
