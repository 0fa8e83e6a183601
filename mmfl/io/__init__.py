"""I/O at the edges: artifact stores (local, MinIO) and MLflow tracking."""

from mmfl.io.store import ArtifactStore, LocalStore, open_store, validate_key

__all__ = ["ArtifactStore", "LocalStore", "open_store", "validate_key"]
