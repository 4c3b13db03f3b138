"""Publish one version directory to an S3-compatible bucket, the manifest last.

A poller treats a version as published once its manifest exists, so the graph (and the
confusion matrix, if any) go up first. The graph is checked against the manifest before
anything is sent, and the very bytes that were checked are the ones uploaded.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import PublishError
from .manifest import GRAPH_FILE, MANIFEST_FILE, Manifest, read_manifest, sha256_bytes
from .store import normalise_prefix

CONFUSION_FILE = "confusion.png"
UPLOAD_ORDER = (GRAPH_FILE, CONFUSION_FILE, MANIFEST_FILE)  # manifest LAST


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    def key(self, name: str, version: int, filename: str) -> str:
        return f"{self.prefix}{name}/{version}/{filename}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket[/prefix]`` → bucket and normalised prefix."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise PublishError(f"--to must look like s3://bucket/prefix, got {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    return S3Location(bucket, normalise_prefix(prefix))


def verified_files(directory: Path, name: str, version: int) -> tuple[Manifest, dict[str, bytes]]:
    """The files to upload, in upload order, after checking the manifest and the graph."""
    try:
        manifest = read_manifest(directory)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    if (manifest.name, manifest.version) != (name, version):
        raise PublishError(f"{directory}: the manifest describes {manifest.name} version "
                           f"{manifest.version}, not {name} version {version}")
    files = {f: (directory / f).read_bytes() for f in UPLOAD_ORDER if (directory / f).is_file()}
    if GRAPH_FILE not in files:
        raise PublishError(f"{directory / GRAPH_FILE} is missing")
    digest = sha256_bytes(files[GRAPH_FILE])
    if digest != manifest.sha256:
        raise PublishError(f"{directory / GRAPH_FILE}: sha256 {digest[:12]}… does not match the "
                           f"manifest's {manifest.sha256[:12]}…; refusing to publish")
    return manifest, files


def publish(client: Any, directory: Path, name: str, version: int, location: S3Location,
            force: bool = False, say: Callable[[str], None] = print) -> list[str]:
    """Upload ``directory`` as ``name`` version ``version``; returns the keys in upload order."""
    from botocore.exceptions import BotoCoreError, ClientError

    _, files = verified_files(directory, name, version)
    manifest_key = location.key(name, version, MANIFEST_FILE)
    try:
        if not force and _exists(client, location.bucket, manifest_key):
            raise PublishError(f"{location.url(manifest_key)} already exists; versions are "
                               "immutable (use --force to overwrite)")
        keys = []
        for filename, data in files.items():
            key = location.key(name, version, filename)
            _upload(client, location.bucket, key, data)
            say(f"uploaded {filename} ({len(data):,} bytes) -> {location.url(key)}")
            keys.append(key)
    except (BotoCoreError, ClientError) as exc:
        raise PublishError(f"cannot publish to s3://{location.bucket}/{location.prefix}: {exc}") from None
    return keys


def _upload(client: Any, bucket: str, key: str, data: bytes) -> None:
    from tqdm import tqdm

    with tqdm(total=len(data), unit="B", unit_scale=True, desc=key.rsplit("/", 1)[-1],
              file=sys.stderr, leave=False, disable=None) as bar:
        client.upload_fileobj(io.BytesIO(data), bucket, key, Callback=bar.update)


def _exists(client: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True
