"""Fuzzing the artifact readers: any bytes give an ArtifactError or a well-formed object, never a crash."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfl.state import ClientUpdate, RoundState
from mmfl.io.codec import json_from_bytes, state_from_bytes, state_to_bytes, tensors_from_bytes, update_from_bytes, update_to_bytes
from mmfl.errors import ArtifactError
from mmfl.io.store import LocalStore

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

STATE = RoundState(3, {"model/w": torch.randn(4, 3), "model/b": torch.zeros(3), "count": torch.arange(5)},
                   {"method": "fedavg", "history": [{"round": 3, "train_loss": 0.5}]})
UPDATE = ClientUpdate(2, 40, {"model/w": torch.randn(4, 3)}, {"train_loss": 0.7}, {"note": "x"})
STATE_T, STATE_J = state_to_bytes(STATE)
UPDATE_T, UPDATE_J = update_to_bytes(UPDATE)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10)


@st.composite
def mangled(draw, data: bytes) -> bytes:
    """``data`` truncated, bit-flipped, spliced or replaced: what a torn write or bad disk leaves."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "random", "header"]))
    buf = bytearray(data)
    if kind == "truncate":
        return bytes(buf[: draw(st.integers(0, max(0, len(buf) - 1)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if kind == "splice":
        i = draw(st.integers(0, len(buf)))
        return bytes(buf[:i] + draw(st.binary(max_size=64)) + buf[i:])
    if kind == "header":  # absurd header lengths in the first 8 bytes of a safetensors file
        n = draw(st.sampled_from([0, 1, 7, 2**32, 2**63, 2**64 - 1, 100_000_001]) | st.integers(0, 2**64 - 1))
        return n.to_bytes(8, "little") + bytes(buf[8:])
    return draw(st.binary(max_size=256))


def check_state(result: RoundState) -> None:
    assert isinstance(result.round, int) and not isinstance(result.round, bool) and result.round >= 0
    assert isinstance(result.meta, dict)
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in result.tensors.items())


@FUZZ
@given(tensor_bytes=mangled(STATE_T) | st.just(STATE_T), json_bytes=mangled(STATE_J) | st.just(STATE_J))
def test_state_reader_on_damaged_bytes(tensor_bytes, json_bytes):
    try:
        result = state_from_bytes(tensor_bytes, json_bytes, "rounds/00003")
    except ArtifactError as exc:
        assert "rounds/00003" in str(exc)
    else:
        check_state(result)
        if tensor_bytes != STATE_T:  # only the exact tensor file its metadata names is ever accepted
            raise AssertionError("damaged tensors were read as the checkpoint")


@FUZZ
@given(doc=json_values, tensor_bytes=st.just(STATE_T) | st.binary(max_size=64))
def test_state_reader_on_any_json(doc, tensor_bytes):
    try:
        raw = json.dumps(doc).encode()
    except (ValueError, OverflowError):
        return
    try:
        check_state(state_from_bytes(tensor_bytes, raw))
    except ArtifactError:
        pass


@FUZZ
@given(doc=json_values | st.fixed_dictionaries(
    {"client_id": json_values, "num_samples": json_values},
    optional={"metrics": json_values, "meta": json_values, "sha256": st.text(max_size=64)}))
def test_update_reader_on_any_json(doc):
    try:
        raw = json.dumps(doc).encode()
    except (ValueError, OverflowError):
        return
    try:
        update = update_from_bytes(UPDATE_T, raw, "updates/client_00002")
    except ArtifactError as exc:
        assert "updates/client_00002" in str(exc)
    else:
        assert isinstance(update.client_id, int) and isinstance(update.num_samples, int)
        assert all(isinstance(v, float) for v in update.metrics.values()) and isinstance(update.meta, dict)


@FUZZ
@given(tensor_bytes=mangled(UPDATE_T), json_bytes=mangled(UPDATE_J) | st.just(UPDATE_J))
def test_update_reader_on_damaged_bytes(tensor_bytes, json_bytes):
    try:
        update_from_bytes(tensor_bytes, json_bytes)
    except ArtifactError:
        return
    assert tensor_bytes == UPDATE_T or json_bytes != UPDATE_J  # the digest refuses mismatched tensors


@FUZZ
@given(data=st.binary(max_size=300) | mangled(STATE_T))
def test_raw_tensor_and_json_readers(data):
    for reader in (tensors_from_bytes, json_from_bytes):
        try:
            reader(data)
        except ArtifactError:
            pass


@pytest.mark.parametrize("payload", [b"[" * 100_000, b'{"a":' * 50_000, "\ud800".encode("utf-8", "surrogatepass"),
                                     b'{"round": 1e400, "meta": {}}', b'{"round": true, "meta": {}}',
                                     b'{"round": -1, "meta": {}}', b"NaN", b""])
def test_pathological_json(payload):
    with pytest.raises(ArtifactError):
        state_from_bytes(STATE_T, payload)


@pytest.mark.parametrize("doc", [{"client_id": 1e400, "num_samples": 3}, {"client_id": "7", "num_samples": 3},
                                 {"client_id": True, "num_samples": 3}, {"client_id": 1, "num_samples": [3]},
                                 {"client_id": 1, "num_samples": 3, "metrics": {"loss": "high"}},
                                 {"client_id": 1, "num_samples": 3, "metrics": {"loss": 1e400}, "meta": []},
                                 [1, 2], "update", 5])
def test_malformed_update_metadata(doc):
    raw = json.dumps(doc).encode()
    with pytest.raises(ArtifactError):
        update_from_bytes(UPDATE_T, raw)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensor_bytes=mangled(STATE_T), json_bytes=mangled(STATE_J) | st.just(STATE_J))
def test_local_store_get_state_on_damaged_files(tmp_path, tensor_bytes, json_bytes):
    store = LocalStore(tmp_path / "store")
    (store.root / "exp" / "rounds" / "00003").mkdir(parents=True, exist_ok=True)
    (store.root / "exp/rounds/00003/state.safetensors").write_bytes(tensor_bytes)
    (store.root / "exp/rounds/00003/state.json").write_bytes(json_bytes)
    try:
        check_state(store.get_state("exp/rounds/00003"))
    except ArtifactError as exc:
        assert "exp/rounds/00003" in str(exc)


def test_local_store_missing_and_unreadable(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ArtifactError, match="not found"):
        store.get_state("exp/rounds/00001")
    (store.root / "exp/rounds/00001/state.safetensors").mkdir(parents=True)
    with pytest.raises(ArtifactError, match="folder"):
        store.get_state("exp/rounds/00001")
