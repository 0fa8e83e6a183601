"""Shared fixtures: small configs and real local servers."""

from __future__ import annotations

import os

# Tiny test models run fastest on one thread, and several threads per process thrash on a
# 2-core machine; subprocesses started by tests inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.helpers.servers import mlflow_server  # noqa: E402
from tests.helpers.s3 import S3Server, seaweedfs_s3  # noqa: E402
from mmfl.methods import parse_experiment

torch.set_num_threads(1)

# Property tests draw the same examples on every run (CI must not be flaky); `make fuzz` explores
# with fresh random examples and many more of them (HYPOTHESIS_PROFILE=fuzz).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=150)
settings.register_profile("fuzz", derandomize=False, deadline=None, max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real ``mlflow server`` on 127.0.0.1 for the whole test session."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    """A real S3 server (SeaweedFS) on 127.0.0.1 with credential checks, for the whole session."""
    with seaweedfs_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


def tiny_config_dict(tmp_path: Path, **sections) -> dict:
    """A synthetic experiment that trains in about a second."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "data": {"name": "synthetic", "synthetic": {"num_samples": 240, "num_classes": 4, "dims": {"a": 8, "b": 6}}},
        "partition": {"scheme": "dirichlet", "num_clients": 4, "alpha": 1.0, "min_client_size": 8},
        "missing": {"pattern": "mixed", "rate": 0.5},
        "model": {"embed_dim": 16, "hidden": 32},
        "method": {"name": "fedavg"},
        "train": {"rounds": 3, "local_epochs": 1, "batch_size": 16, "lr": 0.05},
        "eval": {"every": 1},
        "storage": {"kind": "local", "root": str(tmp_path / "store")},
        "tracking": {"enabled": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    return parse_experiment(tiny_config_dict(tmp_path))
