"""Kill a real ``mmfl run`` between rounds while its checkpoints go to S3, then resume from S3.

Runs against the SeaweedFS S3 server with the MinIO store.
"""

from __future__ import annotations

import signal
import uuid

import pytest

from mmfl.io.layout import resume_point, round_prefix
from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.runs import assert_same_rounds, start_run, wait_until

pytestmark = [pytest.mark.server, pytest.mark.slow]
ROUNDS = 3


def test_sigkill_between_rounds_resumes_from_s3(s3_server, tmp_path, monkeypatch):
    from mmfl.io.minio_store import MinioStore

    bucket = f"resume-{uuid.uuid4().hex[:10]}"
    base = tiny_config_dict(tmp_path, train={"rounds": ROUNDS}, eval={"every": 3})
    s3 = {"kind": "minio", "root": "runs", "bucket": bucket, "endpoint": s3_server.endpoint}
    # client 0 stalls in round 3: the kill lands after round 2's checkpoint reached the bucket
    raw = {**base, "storage": s3,
           "reliability": {"fault_injection": [{"round": 3, "client": 0, "mode": "sleep", "seconds": 600}]}}
    exp_id = parse_experiment(raw).experiment_id()
    for key, value in s3_server.env().items():  # credentials only through the environment
        monkeypatch.setenv(key, value)
    store = MinioStore.from_env(bucket=bucket, prefix="runs", endpoint=s3_server.endpoint)

    proc = start_run(tmp_path, raw)
    wait_until(lambda: store.exists(f"{round_prefix(exp_id, 2)}/metrics.json"), proc, "round 2's checkpoint in S3")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert resume_point(store, exp_id)[0] == 2
    assert not store.exists(f"{round_prefix(exp_id, 3)}/state.json")

    result = run_experiment(parse_experiment({**base, "storage": s3}), progress=False)
    assert result.resumed_from == 2 and result.rounds_done == ROUNDS

    reference = parse_experiment(base)  # uninterrupted, on local disk
    run_experiment(reference, progress=False)
    assert reference.experiment_id() == exp_id
    assert_same_rounds(store, LocalStore(tmp_path / "store"), exp_id, ROUNDS)
