"""I/O at the edges: artifact stores (local, MinIO), their byte format and key layout, MLflow tracking.

The store classes (and with them torch, for the byte format) are imported on first use, so that
``mmfl.io.tracking`` and ``mmfl.io.runs`` (``mmfl report``) start without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmfl.errors import ArtifactError

if TYPE_CHECKING:
    from mmfl.io.store import ArtifactStore, LocalStore, validate_key

_LAZY = ("ArtifactStore", "LocalStore", "validate_key")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from mmfl.io import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(kind: str, root: str, bucket: str = "mmfl", endpoint: str | None = None, secure: bool = False) -> ArtifactStore:
    """LocalStore for ``local``; MinioStore (credentials from the environment) for ``minio``."""
    if kind == "local":
        from mmfl.io.store import LocalStore

        return LocalStore(root)
    if kind == "minio":
        from mmfl.io.minio_store import MinioStore

        return MinioStore.from_env(bucket=bucket, prefix=root, endpoint=endpoint, secure=secure)
    raise ArtifactError(f"storage.kind = {kind!r}: use local or minio")


def store_of(storage) -> ArtifactStore:
    """The store of a config's ``storage`` section."""
    return open_store(storage.kind, storage.root, storage.bucket, storage.endpoint, storage.secure)


__all__ = ["ArtifactStore", "LocalStore", "open_store", "store_of", "validate_key"]
