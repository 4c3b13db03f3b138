"""Where model versions live: ``<model>/<version>/{model.pb, manifest.json}`` under a local
``graphs_dir`` or an S3-compatible ``bucket/prefix``. ``ModelStore`` hides which."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from ..errors import ModelLoadError
from .manifest import GRAPH_FILE, MANIFEST_FILE, Manifest, sha256_bytes


def list_versions(graphs_dir: Path, name: str) -> list[int]:
    """Versions of ``name`` present on disk, oldest first (directories named by an integer)."""
    model_dir = Path(graphs_dir) / name
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def version_dir(graphs_dir: Path, name: str, version: int) -> Path:
    return Path(graphs_dir) / name / str(version)


def next_version(graphs_dir: Path, name: str) -> int:
    versions = list_versions(graphs_dir, name)
    return versions[-1] + 1 if versions else 1


def write_version(graphs_dir: Path, manifest: Manifest, graph_bytes: bytes) -> Path:
    """Write a version atomically: a reader sees the whole directory or nothing."""
    final = version_dir(graphs_dir, manifest.name, manifest.version)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.version}-", dir=final.parent))
    try:
        (staging / GRAPH_FILE).write_bytes(graph_bytes)
        manifest.write(staging)
        for path in (staging / GRAPH_FILE, staging / MANIFEST_FILE):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(staging, 0o755)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


class ModelStore(Protocol):
    """Where versions come from. ``fetch`` returns a local directory holding the version."""

    def list_versions(self, name: str) -> list[int]:
        """Complete versions of ``name``, oldest first."""

    def fetch(self, name: str, version: int) -> Path:
        """A local directory with the version's files; ModelLoadError if it cannot be had."""

    def describe(self, name: str) -> str:
        """Where ``name``'s versions live, for messages."""


class LocalStore:
    """The ``graphs/`` directory itself: nothing to download."""

    def __init__(self, graphs_dir: Path):
        self.graphs_dir = Path(graphs_dir)

    def list_versions(self, name: str) -> list[int]:
        return list_versions(self.graphs_dir, name)

    def fetch(self, name: str, version: int) -> Path:
        directory = version_dir(self.graphs_dir, name, version)
        if not directory.is_dir():
            raise ModelLoadError(f"{name}: version {version} is not in {self.describe(name)}")
        return directory

    def describe(self, name: str) -> str:
        return str(self.graphs_dir / name)


class S3Store:
    """``s3://bucket/<prefix><model>/<version>/...``, downloaded into ``cache_dir`` to load.

    A version counts as published once its manifest exists (publishers upload it last). A
    download lands in a temp dir renamed into place, so the cache never holds half a version;
    a cached copy is reused only while its model.pb still matches the bucket's manifest.
    """

    def __init__(self, client: Any, bucket: str, prefix: str, cache_dir: Path):
        self.client = client
        self.bucket = bucket
        self.prefix = normalise_prefix(prefix)
        self.cache_dir = Path(cache_dir)

    def describe(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}/"

    def key(self, name: str, version: int, filename: str) -> str:
        return f"{self.prefix}{name}/{version}/{filename}"

    def list_versions(self, name: str) -> list[int]:
        base = f"{self.prefix}{name}/"
        versions = set()
        with _s3_errors(f"cannot list {self.describe(name)}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=base)
            for page in pages:
                for item in page.get("Contents", []):
                    version, _, filename = item["Key"][len(base):].partition("/")
                    if version.isdigit() and filename == MANIFEST_FILE:
                        versions.add(int(version))
        return sorted(versions)

    def fetch(self, name: str, version: int) -> Path:
        manifest_bytes = self._get(self.key(name, version, MANIFEST_FILE))
        expected = _manifest_sha256(manifest_bytes, self.key(name, version, MANIFEST_FILE))
        final = self.cache_dir / name / str(version)
        if _cached_graph_matches(final, expected):
            return final
        graph_bytes = self._get(self.key(name, version, GRAPH_FILE))
        digest = sha256_bytes(graph_bytes)
        if digest != expected:
            raise ModelLoadError(
                f"s3://{self.bucket}/{self.key(name, version, GRAPH_FILE)}: sha256 {digest[:12]}… "
                f"does not match the manifest's {expected[:12]}… (corrupt or replaced file)")
        try:
            _install(final, {GRAPH_FILE: graph_bytes, MANIFEST_FILE: manifest_bytes})
        except OSError as exc:
            if _cached_graph_matches(final, expected):  # another process installed it first
                return final
            raise ModelLoadError(f"cannot write {final}: {exc.strerror or exc}") from None
        return final

    def _get(self, key: str) -> bytes:
        with _s3_errors(f"cannot download s3://{self.bucket}/{key}"):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


def normalise_prefix(prefix: str) -> str:
    """``"a/b"``, ``"/a/b/"`` → ``"a/b/"``; empty stays empty (the bucket's root)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def as_store(source: Path | str | ModelStore) -> ModelStore:
    """A ``graphs_dir`` path is shorthand for the local store over it."""
    return LocalStore(Path(source)) if isinstance(source, (str, Path)) else source


@contextlib.contextmanager
def _s3_errors(what: str):
    """Any botocore failure (missing key, refused credentials, no endpoint) → ModelLoadError."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise ModelLoadError(f"{what}: {error.get('Code')} {error.get('Message', '')}".strip()) from None
    except BotoCoreError as exc:
        raise ModelLoadError(f"{what}: {exc}") from None


def _manifest_sha256(data: bytes, where: str) -> str:
    try:
        return Manifest.from_dict(json.loads(data)).sha256
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: not a valid manifest: {exc}") from None


def _cached_graph_matches(directory: Path, sha256: str) -> bool:
    try:
        return sha256_bytes((directory / GRAPH_FILE).read_bytes()) == sha256
    except OSError:
        return False


def _install(final: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a temp dir beside ``final``, then swap it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        for filename, data in files.items():
            (staging / filename).write_bytes(data)
        os.chmod(staging, 0o755)
        if final.exists():  # a stale copy (its graph no longer matches): move it aside first
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}-stale-", dir=final.parent))
            os.rename(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
