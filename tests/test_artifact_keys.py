"""Artifact keys cannot escape the store: traversal, absolute paths, odd characters, symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmfl.errors import ArtifactError
from mmfl.io.store import LocalStore, validate_key

BAD_KEYS = [
    "", "/", "../x", "a/../../x", "..", ".", "a/./b", "/etc/passwd", "//server/share", "a//b", "a/b/",
    "a\\..\\x", "..\\x", "C:\\x", "a\x00b", "a\nb", "state.json\n", "a\tb", " a", "-rf", ".hidden", "a/.tmp-x.part",
    "\u2025/x",  # two dot leader
    "\uff0e\uff0e/x",  # fullwidth full stops
    "a\u2215..\u2215x",  # division slash
    "a\u202eb",  # right-to-left override
    "caf\u00e9",  # non-ASCII letter (normalisation tricks)
    "a\u200bb",  # zero-width space
    "~/x", "$HOME/x", "a*b", "a?b", "a:b", "a%2f..%2fx", "x" * 201,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_refused_with_the_key_named(key):
    with pytest.raises(ArtifactError, match="artifact key"):
        validate_key(key)


@pytest.mark.parametrize("key", [None, 3, b"a/b", ["a"]], ids=repr)
def test_non_string_keys_are_refused(key):
    with pytest.raises(ArtifactError, match="non-empty string"):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "exp-1/rounds/00003/state.safetensors", "a/b=c/d_e.f", "x" * 200])
def test_good_keys_pass(key):
    assert validate_key(key) == key


def test_every_store_operation_validates_its_key(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "secret.txt").write_text("outside")
    for op in (lambda: store.put_bytes("../secret.txt", b"x"), lambda: store.get_bytes("../secret.txt"),
               lambda: store.exists("../secret.txt"), lambda: store.list("../"),
               lambda: store.get_state("../x"), lambda: store.put_json("/abs.json", {})):
        with pytest.raises(ArtifactError):
            op()
    assert (tmp_path / "secret.txt").read_text() == "outside"


def test_symlink_out_of_the_store_is_refused(tmp_path):
    store = LocalStore(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.json").write_text("{}")
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match="outside the store root"):
        store.get_bytes("link/data.json")
    with pytest.raises(ArtifactError, match="outside the store root"):
        store.put_bytes("link/new.json", b"{}")
    assert not (outside / "new.json").exists()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=0, max_size=60) | st.lists(st.sampled_from(["..", ".", "", "a", "b.c", "/", "\\", "\x00"]),
                                                        max_size=6).map("/".join))
def test_any_key_is_refused_or_stays_inside_the_root(tmp_path, key):
    store = LocalStore(tmp_path / "store")
    try:
        path = store._path(key)
    except ArtifactError:
        return
    assert store.root in path.parents
    assert Path(store.root, key).resolve() == path


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b", "a\x00b", "state.json\n", "\uff0e\uff0e/x"], ids=repr)
def test_s3_store_refuses_bad_keys_before_any_request(key):
    """The S3 store validates keys itself: nothing is sent (the endpoint below accepts no connections)."""
    from mmfl.io import minio_store

    store = minio_store.MinioStore("127.0.0.1:9", "not-used", "not-used", bucket="b", prefix="p", create_bucket=False)
    for op in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key), lambda: store.exists(key),
               lambda: store.list(key)):
        with pytest.raises(ArtifactError, match="artifact key"):
            op()
    if key.strip("/") == key:  # (the store prefix may carry leading/trailing slashes)
        with pytest.raises(ArtifactError, match="artifact key"):
            minio_store.MinioStore("127.0.0.1:9", "a", "b", bucket="b", prefix=key, create_bucket=False)
