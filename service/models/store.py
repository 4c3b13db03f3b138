"""Where model versions live on disk: ``<graphs_dir>/<model>/<version>/{model.pb, manifest.json}``."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .manifest import GRAPH_FILE, MANIFEST_FILE, Manifest


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
