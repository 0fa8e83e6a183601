"""One run per experiment at a time: a file lock in a local store, a lease object in S3.

A second ``mmfl run`` of an experiment that is running stops at once with one clear line
instead of training everything again and logging every metric twice.

- ``LocalStore``: ``<experiment>/run.lock`` held with ``flock``; the kernel releases it when the
  process ends in any way (``kill -9`` included), so a lock is never stale.
- Any other store (S3/MinIO): ``<experiment>/lease.json`` = {owner, host, pid, expires}. A run
  takes a lease that is free, released or expired, reads it back to make sure it won a race,
  and renews it from a background thread every ``ttl / 3`` seconds; a run that dies without
  releasing it blocks others for at most ``ttl`` seconds. Hosts are assumed to have clocks
  within a few seconds of each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from mmfl.errors import ArtifactError, MmflError
from mmfl.io.store import ArtifactStore, LocalStore

log = logging.getLogger(__name__)
LEASE_TTL_S = 120.0
SETTLE_S = 0.3  # time between writing a lease and reading it back (a concurrent writer shows up here)


class ExperimentBusy(MmflError):
    """Another process is running this experiment."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _busy(exp_id: str, doc: dict[str, Any], extra: str = "") -> ExperimentBusy:
    who = f"pid {doc.get('pid', '?')} on {doc.get('host', '?')} since {doc.get('since', '?')}"
    return ExperimentBusy(f"experiment {exp_id} is already being run ({who}){extra}; wait for that run to finish "
                          "or stop it, then run again (it resumes from the last checkpoint)")


@contextlib.contextmanager
def _file_lock(store: LocalStore, exp_id: str) -> Iterator[None]:
    import fcntl

    path = store.root / exp_id / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            doc = dict(part.split("=", 1) for part in text.split() if "=" in part)
            raise _busy(exp_id, doc) from None
        info = _holder()
        os.ftruncate(fd, 0)
        os.pwrite(fd, " ".join(f"{k}={v}" for k, v in info.items()).encode() + b"\n", 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _dead_here(doc: dict[str, Any]) -> bool:
    """A lease held by a process of this host that no longer exists (killed before it could release it)."""
    if doc.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(doc.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


@contextlib.contextmanager
def _lease(store: ArtifactStore, exp_id: str, ttl_s: float) -> Iterator[None]:
    key = f"{exp_id}/lease.json"
    owner = uuid.uuid4().hex

    def current() -> dict[str, Any] | None:
        try:
            return store.get_json(key) if store.exists(key) else None
        except ArtifactError:  # a damaged lease counts as free
            return None

    doc = current()
    if (doc and doc.get("owner") != owner and not doc.get("released") and float(doc.get("expires", 0)) > time.time()
            and not _dead_here(doc)):
        raise _busy(exp_id, doc, f", lease expires in {float(doc['expires']) - time.time():.0f}s")
    mine = {"owner": owner, **_holder(), "expires": time.time() + ttl_s}
    store.put_json(key, mine)
    time.sleep(SETTLE_S)
    doc = current()
    if not doc or doc.get("owner") != owner:
        raise _busy(exp_id, doc or {}, " (it took the lease at the same moment)")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                store.put_json(key, {**mine, "expires": time.time() + ttl_s})
            except MmflError as exc:
                log.warning("could not renew the lease of %s: %s", exp_id, exc)

    thread = threading.Thread(target=renew, name=f"mmfl-lease-{exp_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        with contextlib.suppress(MmflError):
            store.put_json(key, {**mine, "expires": 0, "released": True})


def experiment_lock(store: ArtifactStore, exp_id: str, ttl_s: float = LEASE_TTL_S) -> contextlib.AbstractContextManager:
    """Hold the experiment for this process; ExperimentBusy (one line) if another one runs it."""
    if isinstance(store, LocalStore):
        return _file_lock(store, exp_id)
    return _lease(store, exp_id, ttl_s)
