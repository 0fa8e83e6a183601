"""Kill a real ``mmfl run`` process, resume it, and get exactly the uninterrupted result.

Also: damaged or partial checkpoints are never read as complete; resume picks the newest
round that is complete and readable.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from mmfl.io.layout import resume_point, round_prefix
from mmfl.local import run_experiment
from mmfl.io.store import LocalStore
from mmfl.methods import parse_experiment
from tests.conftest import tiny_config_dict
from tests.helpers.runs import assert_same_rounds, start_run, wait_until

ROUNDS = 4


def experiment(tmp_path: Path, **reliability) -> dict:
    return tiny_config_dict(tmp_path, train={"rounds": ROUNDS}, eval={"every": 2}, reliability=reliability)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (config, store)."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = parse_experiment(experiment(tmp))
    run_experiment(cfg, progress=False)
    return cfg, LocalStore(tmp / "store")


def test_sigkill_between_rounds_then_resume_gives_identical_results(tmp_path, reference):
    ref_cfg, ref_store = reference
    # client 0 stalls in round 3, so the kill lands after round 2's checkpoint and before round 3's
    raw = experiment(tmp_path, fault_injection=[{"round": 3, "client": 0, "mode": "sleep", "seconds": 600}])
    exp_id = parse_experiment(raw).experiment_id()
    assert exp_id == ref_cfg.experiment_id()
    proc = start_run(tmp_path, raw)
    checkpoint = tmp_path / "store" / round_prefix(exp_id, 2) / "metrics.json"
    wait_until(checkpoint.exists, proc, "round 2's checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    store = LocalStore(tmp_path / "store")
    assert not store.exists(f"{round_prefix(exp_id, 3)}/metrics.json")

    raw["reliability"] = {}  # the same experiment without the stall
    result = run_experiment(parse_experiment(raw), progress=False)
    assert result.resumed_from == 2 and result.rounds_done == ROUNDS
    assert_same_rounds(store, ref_store, exp_id, ROUNDS)


def test_process_dying_inside_a_client_step_then_rerun_gives_identical_results(tmp_path, reference):
    ref_cfg, ref_store = reference
    marker = tmp_path / "fault-fired"
    raw = experiment(tmp_path, fault_injection=[
        {"round": 2, "client": 2, "mode": "exit", "once_file": str(marker)}])
    proc = start_run(tmp_path, raw)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 137, err[-2000:]
    assert marker.exists()
    store = LocalStore(tmp_path / "store")
    exp_id = ref_cfg.experiment_id()
    assert resume_point(store, exp_id)[0] == 1

    result = run_experiment(parse_experiment(raw), progress=False)  # same config: the fault has fired once
    assert result.resumed_from == 1 and result.rounds_done == ROUNDS
    assert all(h["clients"]["failed"] == [] for h in result.history)
    assert_same_rounds(store, ref_store, exp_id, ROUNDS)


def _copy_rounds(src: LocalStore, dst: LocalStore, exp_id: str, upto: int) -> None:
    for key in src.list(exp_id):
        parts = key.split("/")
        if parts[1] == "rounds" and int(parts[2]) > upto:
            continue
        dst.put_bytes(key, src.get_bytes(key))


def _damage(store: LocalStore, ref: LocalStore, exp_id: str, how: str) -> None:
    """Leave round 3 of ``store`` as a kill, a mixed write or a disk fault could leave it."""
    prefix = round_prefix(exp_id, 3)
    full = store.root / prefix
    full.mkdir(parents=True, exist_ok=True)
    state = ref.get_bytes(f"{prefix}/state.safetensors")
    state_json = ref.get_bytes(f"{prefix}/state.json")
    metrics = ref.get_bytes(f"{prefix}/metrics.json")
    if how == "leftover-temp-and-truncated-state":  # killed while writing round 3 (non-atomic writer)
        (full / ".tmp-abc123.part").write_bytes(state[: len(state) // 3])
        (full / "state.safetensors").write_bytes(state[: len(state) // 2])
        return
    if how == "state-without-metrics":  # killed between the state and metrics.json
        store.put_bytes(f"{prefix}/state.safetensors", state)
        store.put_bytes(f"{prefix}/state.json", state_json)
        return
    store.put_bytes(f"{prefix}/state.json", state_json)
    store.put_bytes(f"{prefix}/metrics.json", metrics)
    if how == "truncated-state-with-metrics":  # damaged on disk after it was complete
        store.put_bytes(f"{prefix}/state.safetensors", state[:-7])
    elif how == "bit-flipped-state-with-metrics":
        flipped = bytearray(state)
        flipped[len(flipped) // 2] ^= 0x01  # inside tensor data: still a valid safetensors file
        store.put_bytes(f"{prefix}/state.safetensors", bytes(flipped))
    elif how == "mixed-write-with-metrics":  # tensors of round 2 next to the metadata of round 3
        store.put_bytes(f"{prefix}/state.safetensors", ref.get_bytes(f"{round_prefix(exp_id, 2)}/state.safetensors"))
    elif how == "metadata-of-another-round":
        store.put_bytes(f"{prefix}/state.safetensors", state)
        doc = json.loads(state_json)
        store.put_bytes(f"{prefix}/state.json", json.dumps({**doc, "round": 7}).encode())
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["leftover-temp-and-truncated-state", "state-without-metrics",
                                 "truncated-state-with-metrics", "bit-flipped-state-with-metrics",
                                 "mixed-write-with-metrics", "metadata-of-another-round"])
def test_partial_or_damaged_round_is_never_resumed_from(tmp_path, reference, how):
    ref_cfg, ref_store = reference
    exp_id = ref_cfg.experiment_id()
    store = LocalStore(tmp_path / "store")
    _copy_rounds(ref_store, store, exp_id, upto=2)
    _damage(store, ref_store, exp_id, how)
    assert not any(".tmp-" in k for k in store.list(exp_id))  # temp files are invisible to readers
    round_index, state = resume_point(store, exp_id)
    assert round_index == 2 and state.round == 2


def test_resume_after_damage_recomputes_and_matches(tmp_path, reference):
    ref_cfg, ref_store = reference
    exp_id = ref_cfg.experiment_id()
    store = LocalStore(tmp_path / "store")
    _copy_rounds(ref_store, store, exp_id, upto=ROUNDS)
    prefix = round_prefix(exp_id, 3)
    data = store.get_bytes(f"{prefix}/state.safetensors")
    (store.root / prefix / "state.safetensors").write_bytes(data[: len(data) - 100])
    for key in store.list(round_prefix(exp_id, 4)):
        (store.root / key).unlink()
    result = run_experiment(parse_experiment(experiment(tmp_path)), progress=False)
    assert result.resumed_from == 2 and result.rounds_done == ROUNDS
    assert_same_rounds(store, ref_store, exp_id, ROUNDS)


@pytest.mark.parametrize("damage", [b"garbage", b'{"round": 2' + b"0" * 5000 + b"}", b'{"round": 7}'])
def test_damaged_middle_round_is_recomputed_like_a_torn_last_round(tmp_path, reference, damage):
    ref_cfg, ref_store = reference
    exp_id = ref_cfg.experiment_id()
    store = LocalStore(tmp_path / "store")
    _copy_rounds(ref_store, store, exp_id, upto=ROUNDS)  # complete, then round 2 of 4 damaged on disk
    (store.root / round_prefix(exp_id, 2) / "metrics.json").write_bytes(damage)
    assert resume_point(store, exp_id)[0] == 1
    result = run_experiment(parse_experiment(experiment(tmp_path)), progress=False)
    assert result.resumed_from == 1 and result.rounds_done == ROUNDS
    assert_same_rounds(store, ref_store, exp_id, ROUNDS)
