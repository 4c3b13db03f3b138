"""Where blobs (e.g. logged images) live: a local directory or an S3-compatible bucket.

A tiny interface on purpose (``put_if_absent``, ``get``, ``delete``): both backends write a
key once and never expose a partial object. Also home to :func:`make_s3_client`, the one
place a boto3 S3 client is built from :class:`S3Settings`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from .config import S3Settings
from .errors import ServiceError


class BlobStoreError(ServiceError):
    """The store could not be reached or refused a read or write."""

    code = "blob_store_error"


class BlobStore(Protocol):
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless it is already there; True if written now."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; BlobStoreError if missing or unreadable."""

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""


def make_s3_client(settings: S3Settings, **config: Any):
    """A boto3 S3 client for ``settings``; None fields fall back to boto3's own chain
    (AWS_* variables, ~/.aws, instance roles). ``config`` goes to ``botocore.config.Config``
    (e.g. ``retries``, ``connect_timeout``)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=Config(**config) if config else None)


class LocalBlobStore:
    """Files under ``root``; each written atomically (temp file, fsync, rename)."""

    TMP_SUFFIX = ".tmp"

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise BlobStoreError(f"Blob key {key!r} escapes the store root.")
        return path

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        if path.exists():
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, self.TMP_SUFFIX)
        except OSError as exc:
            raise BlobStoreError(f"Cannot write {path}: {exc}") from exc
        return True

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except OSError as exc:
            raise BlobStoreError(f"Cannot read blob {key!r}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise BlobStoreError(f"Cannot delete blob {key!r}: {exc}") from exc

    def remove_stale_temp_files(self) -> int:
        """Temp files left by a crash between write and rename: never valid, so remove them."""
        count = 0
        if self.root.is_dir():
            for path in self.root.rglob(f".*{self.TMP_SUFFIX}"):
                path.unlink(missing_ok=True)
                count += 1
        return count


def write_atomic(path: Path, data: bytes, suffix: str = ".tmp", mode: int = 0o644) -> None:
    """``path`` holds ``data`` in full or not at all, durably, even across a crash."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3BlobStore:
    """Objects under ``prefix`` in ``bucket``; an S3 PUT is atomic, so no temp objects."""

    def __init__(self, client, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def key(self, key: str) -> str:
        return self.prefix + key

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if self._exists(key):
                return False
            self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreError(f"Cannot write s3://{self.bucket}/{self.key(key)}: {exc}") from exc
        return True

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key))["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreError(f"Cannot read s3://{self.bucket}/{self.key(key)}: {exc}") from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(key))
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreError(f"Cannot delete s3://{self.bucket}/{self.key(key)}: {exc}") from exc
