"""Artifact stores: round-keyed bytes, written atomically, never unpickled.

Keys are relative paths of safe segments (``exp/rounds/00003/state.safetensors``); anything that
could escape the store root (``..``, absolute paths, odd characters) is refused.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from mmfl.state import ClientUpdate, RoundState
from mmfl.io.codec import json_from_bytes, json_to_bytes, state_from_bytes, state_to_bytes, tensors_from_bytes, tensors_to_bytes, update_from_bytes, update_to_bytes
from mmfl.errors import ArtifactError

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative artifact key, else raise ArtifactError naming it."""
    if not isinstance(key, str) or not key:
        raise ArtifactError(f"artifact key {key!r}: must be a non-empty string")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _SEGMENT.fullmatch(part):  # fullmatch: "$" would admit a final newline
            raise ArtifactError(
                f"artifact key {key!r}: segment {part!r} is not allowed (use letters, digits, '.', '_', '-', '=')"
            )
    return key


class ArtifactStore(ABC):
    """Bytes by key, plus typed helpers. Subclasses implement the four byte operations."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder-like key), sorted."""

    # typed helpers ---------------------------------------------------------------------------
    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json_to_bytes(obj))

    def get_json(self, key: str) -> Any:
        return json_from_bytes(self.get_bytes(key), key)

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.put_bytes(key, tensors_to_bytes(tensors))

    def get_tensors(self, key: str) -> dict[str, torch.Tensor]:
        return tensors_from_bytes(self.get_bytes(key), key)

    def put_state(self, prefix: str, state: RoundState) -> None:
        tensors, meta = state_to_bytes(state)
        self.put_bytes(f"{prefix}/state.safetensors", tensors)
        self.put_bytes(f"{prefix}/state.json", meta)  # written second: its presence marks completeness

    def get_state(self, prefix: str) -> RoundState:
        return state_from_bytes(
            self.get_bytes(f"{prefix}/state.safetensors"), self.get_bytes(f"{prefix}/state.json"), prefix
        )

    def put_update(self, prefix: str, update: ClientUpdate) -> None:
        tensors, meta = update_to_bytes(update)
        self.put_bytes(f"{prefix}/update.safetensors", tensors)
        self.put_bytes(f"{prefix}/update.json", meta)

    def get_update(self, prefix: str) -> ClientUpdate:
        return update_from_bytes(
            self.get_bytes(f"{prefix}/update.safetensors"), self.get_bytes(f"{prefix}/update.json"), prefix
        )


class LocalStore(ArtifactStore):
    """Files under a root directory; each write goes to a temp file that is renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".tmp-", suffix=".part")
            probe.close()
        except OSError as exc:
            raise ArtifactError(f"storage.root = {str(root)!r}: cannot write there "
                                f"({exc.strerror or type(exc).__name__})") from None

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if self.root not in path.parents:
            raise ArtifactError(f"artifact key {key!r}: resolves outside the store root")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"artifact {key!r} not found in {self.root}") from None
        except IsADirectoryError:
            raise ArtifactError(f"artifact {key!r} is a folder, not a file") from None
        except OSError as exc:
            raise ArtifactError(f"artifact {key!r} cannot be read: {exc}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
        )
