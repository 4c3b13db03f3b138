"""The served models by name: load each version once, verify it, gate it, warm it, serve it."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError, NotFound, Unavailable
from . import graph, store
from .manifest import GRAPH_FILE, Manifest, read_labels, read_manifest, sha256_bytes
from .session_pool import PoolSettings, RunTiming, SessionPool

log = logging.getLogger("service.models")
REPO_ROOT = Path(__file__).resolve().parents[2]


class ModelState(str, Enum):
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class ModelConfig:
    """How one model is served: which version, the QA floor, and its session pool."""

    name: str
    version: int | None = None  # None: the newest on disk
    min_accuracy: float = 0.0
    pool: PoolSettings = field(default_factory=PoolSettings)


class ServedModel:
    """One loaded, verified and warmed version, with its own session pool."""

    def __init__(self, manifest: Manifest, labels: list[str], layers: list[dict[str, Any]],
                 pool: SessionPool, load_seconds: float):
        self.manifest = manifest
        self.labels = labels
        self.layers = layers
        self.pool = pool
        self.load_seconds = load_seconds
        self.input_shape = tuple(manifest.input.shape[1:])
        self._leases = 0
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def lease(self):
        """Hold the model open while a request uses it; ``retire`` waits for every lease."""
        with self._idle:
            self._leases += 1
        try:
            yield self
        finally:
            with self._idle:
                self._leases -= 1
                if not self._leases:
                    self._idle.notify_all()

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

    def submit(self, images: np.ndarray, deadline: float | None = None):
        """Queue preprocessed images (N, H, W[, C]); the future yields (probabilities, timing)."""
        return self.pool.submit(images.reshape((len(images), *self.input_shape)), deadline)

    def predict(self, images: np.ndarray, timeout: float | None = None) -> tuple[np.ndarray, RunTiming]:
        return self.pool.run(images.reshape((len(images), *self.input_shape)), timeout)

    def close(self) -> None:
        self.pool.stop()


@dataclass
class ModelStatus:
    name: str
    state: ModelState
    version: int | None = None
    error: str | None = None
    model: ServedModel | None = None


def resolve_version(graphs_dir: Path, name: str, pinned: int | None) -> int:
    versions = store.list_versions(graphs_dir, name)
    if pinned is not None:
        if pinned not in versions:
            raise ModelLoadError(f"{name}: pinned version {pinned} is not in "
                                 f"{Path(graphs_dir) / name} (have: {versions or 'none'})")
        return pinned
    if not versions:
        raise ModelLoadError(f"{name}: no versions under {Path(graphs_dir) / name}")
    return versions[-1]


def load_version(graphs_dir: Path, config: ModelConfig, labels_root: Path = REPO_ROOT) -> ServedModel:
    """Read, checksum, gate, import, start and warm one version; ModelLoadError says why not."""
    started = time.monotonic()
    version = resolve_version(graphs_dir, config.name, config.version)
    directory = store.version_dir(graphs_dir, config.name, version)
    manifest = _read_manifest(directory)
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
    return ServedModel(manifest, labels, layers, pool, time.monotonic() - started)


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


def _inspect(graph_bytes: bytes, manifest: Manifest, labels_root: Path):
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


class ModelRegistry:
    """All configured models. A model that fails to load is FAILED; the others still serve."""

    def __init__(self, configs: list[ModelConfig], graphs_dir: Path, labels_root: Path = REPO_ROOT):
        self.graphs_dir = Path(graphs_dir)
        self.labels_root = labels_root
        self._configs = {c.name: c for c in configs}
        self._status = {c.name: ModelStatus(c.name, ModelState.LOADING) for c in configs}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Load every configured model; returns when each is AVAILABLE or FAILED."""
        for config in self._configs.values():
            self._load(config)

    def _load(self, config: ModelConfig) -> None:
        try:
            model = load_version(self.graphs_dir, config, self.labels_root)
        except ModelLoadError as exc:
            log.error("model %s FAILED: %s", config.name, exc.message)
            status = ModelStatus(config.name, ModelState.FAILED, error=exc.message)
        else:
            log.info("model %s version %d loaded in %.2f s", model.name, model.version,
                     model.load_seconds)
            status = ModelStatus(config.name, ModelState.AVAILABLE, model.version, model=model)
        with self._lock:
            self._status[config.name] = status

    def stop(self) -> None:
        with self._lock:
            models = [s.model for s in self._status.values() if s.model]
            self._status = {n: ModelStatus(n, ModelState.LOADING) for n in self._status}
        for model in models:
            model.close()

    def statuses(self) -> list[ModelStatus]:
        with self._lock:
            return list(self._status.values())

    def names(self) -> list[str]:
        return list(self._configs)

    def ready(self) -> bool:
        return all(s.state is ModelState.AVAILABLE for s in self.statuses())

    def get(self, name: str) -> ServedModel:
        """The serving version of ``name``: NotFound if unknown, Unavailable if not loaded."""
        with self._lock:
            status = self._status.get(name)
        if status is None:
            raise NotFound(f"There is no model named {name!r}.", "model_not_found")
        if status.model is None:
            detail = f": {status.error}" if status.error else ""
            raise Unavailable(f"Model {name} is {status.state.value}{detail}", retry_after=5)
        return status.model

    def available(self) -> list[ServedModel]:
        return [s.model for s in self.statuses() if s.model is not None]
