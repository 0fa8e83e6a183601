"""Artifact store in an S3 bucket (MinIO in the cluster), with the same interface as LocalStore.

Why a bucket: on Kubernetes every pipeline task runs in its own pod, so round state, client
updates and prepared data shards must live somewhere all pods (and the local engine) can reach.
A single S3 PUT replaces an object atomically, so a reader never sees half an artifact, which
gives the same guarantee as LocalStore's write-then-rename.

Credentials never appear in configs or code. ``from_env`` reads:

    MINIO_ENDPOINT     host:port of the server (``storage.endpoint`` in the config wins if set)
    MINIO_ACCESS_KEY   access key (falls back to AWS_ACCESS_KEY_ID)
    MINIO_SECRET_KEY   secret key (falls back to AWS_SECRET_ACCESS_KEY)
    MINIO_SECURE       "true"/"1" for https (``storage.secure`` in the config wins if true)
    MINIO_REGION       optional region name

In the cluster these come from the Kubernetes Secret the Helm chart creates.
"""

from __future__ import annotations

import io
import os
from typing import Any

from mmfl.errors import ArtifactError
from mmfl.io.store import ArtifactStore, validate_key

ENV_ENDPOINT = "MINIO_ENDPOINT"
ENV_ACCESS_KEY = "MINIO_ACCESS_KEY"
ENV_SECRET_KEY = "MINIO_SECRET_KEY"
ENV_SECURE = "MINIO_SECURE"
ENV_REGION = "MINIO_REGION"

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class MinioStore(ArtifactStore):
    """Objects ``<prefix>/<key>`` in ``bucket``; the bucket is created on first use if missing."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str = "mmfl",
        prefix: str = "",
        secure: bool = False,
        region: str | None = None,
        create_bucket: bool = True,
    ):
        from minio import Minio

        if not endpoint or "/" in endpoint:
            raise ArtifactError(f"storage.endpoint = {endpoint!r}: expected host:port of the MinIO/S3 server")
        self.endpoint, self.bucket, self.secure = endpoint, bucket, secure
        self.prefix = validate_key(prefix.strip("/")) if prefix.strip("/") else ""
        try:
            self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region)
        except ValueError as exc:
            raise ArtifactError(f"storage.endpoint = {endpoint!r}: {exc}") from None
        if create_bucket:
            self._ensure_bucket()

    @classmethod
    def from_env(
        cls, bucket: str = "mmfl", prefix: str = "", endpoint: str | None = None, secure: bool = False
    ) -> "MinioStore":
        """Build a store from the ``MINIO_*`` environment variables (see the module docstring)."""
        endpoint = endpoint or os.environ.get(ENV_ENDPOINT)
        access = os.environ.get(ENV_ACCESS_KEY) or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get(ENV_SECRET_KEY) or os.environ.get("AWS_SECRET_ACCESS_KEY")
        missing = [name for name, value in ((ENV_ENDPOINT, endpoint), (ENV_ACCESS_KEY, access),
                                            (ENV_SECRET_KEY, secret)) if not value]
        if missing:
            raise ArtifactError(
                f"storage.kind = 'minio' needs {', '.join(missing)} in the environment "
                "(set storage.endpoint in the config or MINIO_ENDPOINT; keys come from a Secret)"
            )
        return cls(endpoint, access, secret, bucket=bucket, prefix=prefix,
                   secure=secure or _truthy(os.environ.get(ENV_SECURE)), region=os.environ.get(ENV_REGION))

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"MinioStore({scheme}://{self.endpoint}/{self.bucket}/{self.prefix})"

    # ------------------------------------------------------------------------------------------
    def _object(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, what: str) -> ArtifactError:
        code = getattr(exc, "code", None)
        where = f"{self!r}"
        if code in _AUTH_CODES:
            return ArtifactError(
                f"{what}: the S3 server at {self.endpoint} refused the credentials ({code}); "
                f"check {ENV_ACCESS_KEY}/{ENV_SECRET_KEY}"
            )
        if code:
            return ArtifactError(f"{what} in {where}: S3 error {code}: {getattr(exc, 'message', exc)}")
        return ArtifactError(f"{what}: cannot reach the S3 server at {self.endpoint} ({type(exc).__name__}: {exc})")

    def _call(self, what: str, fn, *args: Any, **kwargs: Any):
        from minio.error import MinioException

        try:
            return fn(*args, **kwargs)
        except (MinioException, OSError) as exc:
            raise self._error(exc, what) from None
        except Exception as exc:  # urllib3 connection errors are not OSError subclasses in all versions
            if type(exc).__module__.startswith("urllib3"):
                raise self._error(exc, what) from None
            raise

    def _ensure_bucket(self) -> None:
        if not self._call(f"bucket {self.bucket!r}", self.client.bucket_exists, self.bucket):
            from minio.error import S3Error

            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:  # created concurrently by another pod
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._error(exc, f"create bucket {self.bucket!r}") from None

    # ArtifactStore ----------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        name = self._object(key)
        self._call(f"put {key!r}", self.client.put_object, self.bucket, name, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        from minio.error import S3Error

        name = self._object(key)
        try:
            resp = self.client.get_object(self.bucket, name)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ArtifactError(f"artifact {key!r} not found in {self!r}") from None
            raise self._error(exc, f"get {key!r}") from None
        except Exception as exc:
            raise self._error(exc, f"get {key!r}") from None
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        name = self._object(key)
        try:
            self.client.stat_object(self.bucket, name)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                return False
            raise self._error(exc, f"stat {key!r}") from None
        except Exception as exc:  # connection failures
            raise self._error(exc, f"stat {key!r}") from None

    def list(self, prefix: str) -> list[str]:
        base = self._object(prefix).rstrip("/") + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        objects = self._call(f"list {prefix!r}", lambda: list(self.client.list_objects(self.bucket, prefix=base, recursive=True)))
        return sorted(o.object_name[strip:] for o in objects if not o.is_dir)
