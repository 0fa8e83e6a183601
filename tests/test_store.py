"""LocalStore: atomic writes, listing, safe keys, clear errors."""

import pytest
import torch

from mmfl.io.layout import completed_rounds, latest_round, load_round, save_round
from mmfl.state import RoundState
from mmfl.errors import ArtifactError
from mmfl.io.store import LocalStore, validate_key


def test_put_get_list_and_no_temp_files_left(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("exp/a/b.bin", b"123")
    store.put_json("exp/a/c.json", {"k": [1, 2]})
    store.put_tensors("exp/t.safetensors", {"w": torch.ones(2, 3)})
    assert store.get_bytes("exp/a/b.bin") == b"123"
    assert store.get_json("exp/a/c.json") == {"k": [1, 2]}
    assert torch.equal(store.get_tensors("exp/t.safetensors")["w"], torch.ones(2, 3))
    assert store.list("exp") == ["exp/a/b.bin", "exp/a/c.json", "exp/t.safetensors"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    store.put_bytes("exp/a/b.bin", b"456")  # overwrite is atomic replace
    assert store.get_bytes("exp/a/b.bin") == b"456"


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a//b", "a/./b", "a/../../b", "", "a/b\x00c", "a b", "~/x"])
def test_unsafe_keys_are_refused(tmp_path, key):
    with pytest.raises(ArtifactError, match="artifact key"):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_valid_keys_pass():
    assert validate_key("exp-1/rounds/00003/state.safetensors") == "exp-1/rounds/00003/state.safetensors"


def test_missing_and_corrupt_artifacts_are_clear_errors(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        store.get_bytes("exp/nothing.json")
    store.put_bytes("exp/bad.safetensors", b"\x00garbage")
    with pytest.raises(ArtifactError, match="not a valid safetensors"):
        store.get_tensors("exp/bad.safetensors")
    store.put_bytes("exp/bad.json", b"{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        store.get_json("exp/bad.json")


def test_checkpoints_mark_a_round_complete_only_with_metrics(tmp_path):
    store = LocalStore(tmp_path)
    for r in (0, 1, 2):
        save_round(store, "e", RoundState(r, {"model/w": torch.full((2,), float(r))}), {"eval": None})
    store.put_state("e/rounds/00003", RoundState(3, {"model/w": torch.zeros(2)}))  # no metrics: incomplete
    assert completed_rounds(store, "e") == [0, 1, 2]
    assert latest_round(store, "e") == 2
    state, metrics = load_round(store, "e", 2)
    assert state.round == 2 and metrics["round"] == 2
    assert latest_round(store, "other") is None
