"""Loading one model version: fetch, read, verify its sha256, pass the QA gate, import the
graph, start its session pool and warm it. ``ServedModel`` is the result."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import REPO_ROOT, ModelConfig
from ..errors import ModelLoadError
from . import graph
from .manifest import GRAPH_FILE, Manifest, read_labels, read_manifest, sha256_bytes
from .batching import Reply
from .session_pool import RunTiming, SessionPool
from .store import ModelStore, as_store


class ServedModel:
    """One loaded, verified and warmed version, with its own session pool."""

    def __init__(self, manifest: Manifest, labels: list[str], layers: list[dict[str, Any]],
                 pool: SessionPool, load_seconds: float, directory: Path | None = None):
        self.manifest = manifest
        self.directory = directory  # where its files are (the store's copy): confusion.png
        self.labels = labels
        self.layers = layers
        self.pool = pool
        self.load_seconds = load_seconds
        self.input_shape = tuple(manifest.input.shape[1:])
        self._leases = 0
        self._idle = threading.Condition()

    def acquire(self) -> None:
        """Hold the model open while a request uses it; ``retire`` waits for every holder."""
        with self._idle:
            self._leases += 1

    def release(self) -> None:
        with self._idle:
            self._leases -= 1
            if not self._leases:
                self._idle.notify_all()

    @contextlib.contextmanager
    def lease(self) -> Iterator[ServedModel]:
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def retire(self, timeout: float = 60.0) -> None:
        """Close once no request holds a lease (a swapped-out version drains, then stops)."""
        with self._idle:
            self._idle.wait_for(lambda: self._leases == 0, timeout)
        self.close()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    def submit(self, images: np.ndarray, deadline: float | None = None) -> Reply:
        """Queue preprocessed images (N, H, W[, C]); the future yields (probabilities, timing)."""
        return self.pool.submit(images.reshape((len(images), *self.input_shape)), deadline)

    def predict(self, images: np.ndarray, timeout: float | None = None) -> tuple[np.ndarray, RunTiming]:
        return self.pool.run(images.reshape((len(images), *self.input_shape)), timeout)

    def close(self) -> None:
        self.pool.stop()


def resolve_version(source: Path | ModelStore, name: str, pinned: int | None) -> int:
    """``pinned`` if the store has it; None: the newest version. ModelLoadError if neither."""
    model_store = as_store(source)
    versions = model_store.list_versions(name)
    if pinned is not None:
        if pinned not in versions:
            raise ModelLoadError(f"{name}: pinned version {pinned} is not in "
                                 f"{model_store.describe(name)} (have: {versions or 'none'})")
        return pinned
    if not versions:
        raise ModelLoadError(f"{name}: no versions under {model_store.describe(name)}")
    return versions[-1]


def load_version(source: Path | ModelStore, config: ModelConfig, labels_root: Path = REPO_ROOT,
                 version: int | None = None) -> ServedModel:
    """Fetch, read, checksum, gate, import, start and warm one version (default: the one
    ``config`` pins, else the newest); ModelLoadError says why not."""
    started = time.monotonic()
    model_store = as_store(source)
    if version is None:
        version = resolve_version(model_store, config.name, config.version)
    directory = model_store.fetch(config.name, version)
    manifest = _read_manifest(directory)
    if (manifest.name, manifest.version) != (config.name, version):
        raise ModelLoadError(f"{directory}: the manifest describes {manifest.name} version "
                             f"{manifest.version}, not {config.name} version {version}")
    check_quality_gate(manifest, config.min_accuracy)
    graph_bytes = _read_verified_graph(directory / GRAPH_FILE, manifest)
    labels, layers = _inspect(graph_bytes, manifest, labels_root)
    pool = SessionPool(graph_bytes, manifest.input.name, manifest.output_name, config.pool,
                       name=f"{manifest.name}-v{manifest.version}")
    try:
        pool.start()
        warm = np.zeros((1, *manifest.input.shape[1:]), dtype=np.float32)
        outputs, _ = pool.run(warm, timeout=60)
    except Exception as exc:
        pool.stop()
        raise ModelLoadError(f"{directory}: failed to start or warm: {exc}") from exc
    if outputs.shape != (1, len(labels)):
        pool.stop()
        raise ModelLoadError(f"{directory}: output shape {outputs.shape} does not match "
                             f"{len(labels)} labels")
    return ServedModel(manifest, labels, layers, pool, time.monotonic() - started, directory)


def check_quality_gate(manifest: Manifest, floor: float) -> None:
    if manifest.accuracy < floor:
        raise ModelLoadError(
            f"{manifest.name} version {manifest.version} refused by the QA gate: its test "
            f"accuracy {manifest.accuracy:.2%} is below the floor {floor:.2%}", "quality_gate")


def _read_manifest(directory: Path) -> Manifest:
    try:
        return read_manifest(directory)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


def _read_verified_graph(path: Path, manifest: Manifest) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    digest = sha256_bytes(data)
    if digest != manifest.sha256:
        raise ModelLoadError(f"{path}: sha256 {digest[:12]}… does not match the manifest's "
                             f"{manifest.sha256[:12]}… (corrupt or replaced file)")
    return data


def _inspect(graph_bytes: bytes, manifest: Manifest,
             labels_root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Parse the graph once on this thread to check its tensors and list its layers."""
    try:
        tf_graph = graph.import_graph(graph.parse_graph_def(graph_bytes))
        for tensor in (manifest.input.name, manifest.output_name):
            tf_graph.get_tensor_by_name(tensor)
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"{manifest.name} version {manifest.version}: bad graph: {exc}") from None
    try:
        labels = read_labels(labels_root / manifest.labels_file)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{manifest.name}: labels: {exc}") from None
    return labels, graph.list_layers(tf_graph)
