"""MinioStore against a real S3 server (SeaweedFS): same behaviour as LocalStore, clear errors."""

from __future__ import annotations

import uuid

import pytest
import torch

from mmfl.io.layout import latest_round, load_round, save_round
from mmfl.state import ClientUpdate, RoundState
from mmfl.errors import ArtifactError
from mmfl.io.minio_store import MinioStore
from mmfl.io import LocalStore, open_store

pytestmark = pytest.mark.server


def _store(s3_server, prefix: str = "") -> MinioStore:
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    return MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket=bucket, prefix=prefix)


def test_round_trip_matches_local_store(s3_server, tmp_path):
    """Every typed helper gives the same result through the bucket as through the local folder."""
    remote, local = _store(s3_server, prefix="runs"), LocalStore(tmp_path)
    state = RoundState(3, {"model/w": torch.randn(4, 3), "model/b": torch.arange(3.0)}, {"history": [{"round": 3}]})
    update = ClientUpdate(7, 42, {"model/w": torch.ones(2, 2)}, {"train_loss": 0.5}, {"note": "x"})
    for store in (remote, local):
        store.put_json("e1/config.json", {"a": [1, 2]})
        store.put_tensors("e1/data/client_00001.safetensors", {"x": torch.eye(3)})
        save_round(store, "e1", state, {"eval": {"full": {"acc": 0.5, "f1": 0.4}}})
        store.put_update("e1/rounds/00004/updates/client_00007", update)

    assert remote.list("e1") == local.list("e1")
    assert remote.list("e1/rounds") == [k for k in local.list("e1") if k.startswith("e1/rounds/")]
    assert remote.list("nothing-here") == []
    assert remote.get_json("e1/config.json") == {"a": [1, 2]}
    assert torch.equal(remote.get_tensors("e1/data/client_00001.safetensors")["x"], torch.eye(3))
    assert latest_round(remote, "e1") == 3
    got, metrics = load_round(remote, "e1", 3)
    assert got.round == 3 and got.meta == state.meta and metrics["eval"]["full"]["acc"] == 0.5
    assert all(torch.equal(got.tensors[k], v) for k, v in state.tensors.items())
    upd = remote.get_update("e1/rounds/00004/updates/client_00007")
    assert (upd.client_id, upd.num_samples, upd.metrics) == (7, 42, {"train_loss": 0.5})
    assert remote.exists("e1/config.json") and not remote.exists("e1/missing.json")
    # objects really live under the prefix in the bucket
    names = [o.object_name for o in remote.client.list_objects(remote.bucket, prefix="runs/e1/", recursive=True)]
    assert "runs/e1/config.json" in names


def test_overwrite_is_whole_object(s3_server):
    store = _store(s3_server)
    store.put_bytes("k/v.bin", b"a" * 1000)
    store.put_bytes("k/v.bin", b"b")
    assert store.get_bytes("k/v.bin") == b"b"


def test_bad_keys_and_missing_objects_are_clear(s3_server):
    store = _store(s3_server)
    for key in ("../etc/passwd", "/abs", "a//b", "a/$x"):
        with pytest.raises(ArtifactError, match="artifact key"):
            store.put_bytes(key, b"x")
    with pytest.raises(ArtifactError, match="not found"):
        store.get_bytes("exp/none.json")


def test_bad_credentials_give_clear_error(s3_server):
    with pytest.raises(ArtifactError, match="refused the credentials.*MINIO_SECRET_KEY"):
        MinioStore(s3_server.endpoint, s3_server.access_key, "wrong-secret", bucket="t-badcreds")


def test_open_store_minio_reads_env(s3_server, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_store("minio", "pfx", bucket=f"t-{uuid.uuid4().hex[:12]}")
    assert isinstance(store, MinioStore)
    store.put_json("x/y.json", {"ok": True})
    assert store.get_json("x/y.json") == {"ok": True}
    monkeypatch.delenv("MINIO_SECRET_KEY")
    with pytest.raises(ArtifactError, match="MINIO_SECRET_KEY"):
        open_store("minio", "pfx", bucket="t-noenv")


def test_unreachable_server_is_named():
    with pytest.raises(ArtifactError, match=r"cannot reach the S3 server at 127\.0\.0\.1:9"):
        MinioStore("127.0.0.1:9", "key", "secret", bucket="t-unreachable")
    with pytest.raises(ArtifactError, match="storage.endpoint = 'http://x/y'"):
        MinioStore("http://x/y", "key", "secret")
