"""The served models by name: serve each one's current version, lease it to requests, swap in
new versions, poll the store for them.

Versions come from a ``ModelStore`` (local ``graphs/`` or an S3 bucket) through ``loader``. A
new version is loaded into its own session pool beside the serving one and swapped in only
once it is verified, warmed and through the QA gate; the old one drains its leases, then
stops. Whoever wants to hear of loads (metrics) subscribes with ``on_load``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Protocol

from ..config import REPO_ROOT, ModelConfig
from ..errors import ModelLoadError, NotFound, ReloadFailed, Unavailable
from .loader import ServedModel, load_version, resolve_version
from .store import ModelStore, as_store

log = logging.getLogger("service.models")


class LoadHook(Protocol):
    """Told of every load attempt, at start-up or on reload, and whether it succeeded;
    ``kind`` is "load" while the model serves nothing yet, else "reload"."""

    def __call__(self, name: str, version: int, seconds: float, ok: bool, kind: str) -> None: ...


class ModelState(str, Enum):
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class LoadFailure:
    """Why a version was rejected, and when (UTC, ISO 8601)."""

    version: int | None
    reason: str
    code: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelStatus:
    """A snapshot: the registry replaces it whole, so readers never see half a swap."""

    name: str
    state: ModelState
    version: int | None = None
    error: str | None = None
    model: ServedModel | None = None
    pinned: int | None = None             # None: follow the newest version in the store
    previous_version: int | None = None   # what served before the last swap
    last_failure: LoadFailure | None = None

    @property
    def policy(self) -> str:
        return "latest" if self.pinned is None else "pinned"


class ModelRegistry:
    """All configured models. A model that fails to load is FAILED; the others still serve.

    ``start`` loads every model, then (``poll_interval_s`` > 0) polls the store in a daemon
    thread and swaps in newer versions of models that follow the newest. ``reload`` does the
    same on demand, or pins a version (rollback). Reloads of one model are serialised.
    """

    def __init__(self, configs: list[ModelConfig], source: Path | ModelStore,
                 labels_root: Path = REPO_ROOT, poll_interval_s: float = 0.0):
        self.store = as_store(source)
        self.labels_root = labels_root
        self.poll_interval_s = poll_interval_s
        self._configs = {c.name: c for c in configs}
        self._status = {c.name: ModelStatus(c.name, ModelState.LOADING, pinned=c.version)
                        for c in configs}
        self._lock = threading.Lock()  # guards _status; held only to read or swap a snapshot
        self._reload_locks = {c.name: threading.Lock() for c in configs}
        self._versions: dict[str, list[int]] = {}
        self._poll_errors: dict[str, str] = {}
        self._stopping = threading.Event()
        self._poller: threading.Thread | None = None
        self._retiring: list[threading.Thread] = []
        self._load_hooks: list[LoadHook] = []

    def on_load(self, hook: LoadHook) -> None:
        """Call ``hook`` after every load attempt from now on."""
        self._load_hooks.append(hook)

    def start(self) -> None:
        """Load every configured model; returns when each is AVAILABLE or FAILED."""
        for config in self._configs.values():
            self._start_one(config)
        if self.poll_interval_s > 0:
            self._stopping.clear()
            self._poller = threading.Thread(target=self._poll_loop, name="model-poller",
                                            daemon=True)
            self._poller.start()

    def _start_one(self, config: ModelConfig) -> None:
        with self._reload_locks[config.name]:
            status = self._first_loadable(config)
            with self._lock:
                self._status[config.name] = status

    def _first_loadable(self, config: ModelConfig) -> ModelStatus:
        """Pinned: that version. Latest: the newest version that loads, so that a rejected
        newer version (kept as the last failure) leaves a restarted server what it served."""
        name, pinned = config.name, config.version
        try:
            newest = resolve_version(self.store, name, pinned)
            candidates = [newest] if pinned is not None else self.store.list_versions(name)[::-1]
        except ModelLoadError as exc:
            return ModelStatus(name, ModelState.FAILED, error=exc.message, pinned=pinned,
                               last_failure=_failure(None, exc))
        failure = None
        for version in candidates:
            try:
                model = self._load(config, version)
            except ModelLoadError as exc:
                failure = failure or _failure(version, exc)
                continue
            if version != newest:
                log.warning("model %s: serving version %d; newer version %d was rejected",
                            name, version, newest)
            return ModelStatus(name, ModelState.AVAILABLE, model.version, model=model,
                               pinned=pinned, last_failure=failure)
        return ModelStatus(name, ModelState.FAILED, error=failure.reason if failure else None,
                           pinned=pinned, last_failure=failure)

    def _load(self, config: ModelConfig, version: int) -> ServedModel:
        """Every load, at start or on reload, comes through here."""
        kind = "load" if self.status(config.name).model is None else "reload"
        started = time.monotonic()
        try:
            model = load_version(self.store, config, self.labels_root, version)
        except ModelLoadError as exc:
            for hook in self._load_hooks:
                hook(config.name, version, time.monotonic() - started, False, kind)
            log.error("model %s version %s rejected: %s", config.name, version, exc.message,
                      extra={"event": "model_load_failed", "model": config.name,
                             "version": version, "kind": kind, "error": exc.message,
                             "code": exc.code})
            raise
        for hook in self._load_hooks:
            hook(model.name, model.version, model.load_seconds, True, kind)
        log.info("model %s version %d loaded in %.2f s", model.name, model.version,
                 model.load_seconds,
                 extra={"event": "model_loaded", "model": model.name, "version": model.version,
                        "kind": kind, "load_seconds": round(model.load_seconds, 3)})
        return model

    def reload(self, name: str, version: int | None = None) -> ModelStatus:
        """Serve ``version`` and pin it (rollback), or the newest and follow it (None).

        The old version serves until the new one is loaded, warmed and gated; on any failure
        it keeps serving, the failure is recorded, and ReloadFailed says why.
        """
        config = self._config(name)
        with self._reload_locks[name]:
            target = version
            try:
                target = resolve_version(self.store, name, version)
                return self._swap_to(config, target, pinned=version)
            except ModelLoadError as exc:
                self._record_failure(name, target, exc)
                serving = self.status(name).version
                still = (f"; version {serving} keeps serving" if serving is not None else "")
                raise ReloadFailed(f"{exc.message}{still}") from None

    def poll(self, name: str) -> bool:
        """One look at the store for ``name``: swap in a newer version if following the newest.

        A version that was rejected is not retried by polling (an explicit reload retries it).
        """
        config = self._config(name)
        if self.status(name).pinned is not None:
            return False
        newest = self._newest_for_poll(name)
        with self._reload_locks[name]:
            status = self.status(name)  # again: a reload may have run meanwhile
            failed = status.last_failure.version if status.last_failure else None
            serving = status.version if status.model is not None else None
            if (newest is None or status.pinned is not None or newest == failed
                    or (serving is not None and newest <= serving)):
                return False
            log.info("model %s: version %d found in %s", name, newest, self.store.describe(name))
            try:
                self._swap_to(config, newest, pinned=None)
            except ModelLoadError as exc:
                self._record_failure(name, newest, exc)
                return False
            return True

    def _newest_for_poll(self, name: str) -> int | None:
        try:
            versions = self._list_versions(name)
        except ModelLoadError as exc:
            if self._poll_errors.get(name) != exc.message:  # log a new problem once, not per poll
                log.warning("model %s: cannot poll the store: %s", name, exc.message)
            self._poll_errors[name] = exc.message
            return None
        self._poll_errors.pop(name, None)
        return versions[-1] if versions else None

    def _poll_loop(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            for name in self._configs:
                if self._stopping.is_set():
                    return
                try:
                    self.poll(name)
                except Exception:  # the poller must outlive any one bad poll
                    log.exception("model %s: poll failed", name)

    def _swap_to(self, config: ModelConfig, version: int, pinned: int | None) -> ModelStatus:
        """Load ``version`` beside the serving one, then swap the pointer; caller holds the
        model's reload lock. Already serving it: only the policy changes."""
        current = self.status(config.name)
        if current.model is not None and current.version == version:
            return self._replace(config.name, pinned=pinned)
        model = self._load(config, version)
        with self._lock:
            current = self._status[config.name]
            old = current.model
            self._status[config.name] = new = dataclasses.replace(
                current, state=ModelState.AVAILABLE, version=model.version, model=model,
                error=None, pinned=pinned,
                previous_version=old.version if old else current.previous_version)
        if old is None:
            log.info("model %s: now serving version %d", config.name, model.version,
                     extra={"event": "model_swap", "model": config.name,
                            "version": model.version, "previous_version": None})
        else:
            log.info("model %s: swapped version %d -> %d", config.name, old.version, model.version,
                     extra={"event": "model_swap", "model": config.name,
                            "version": model.version, "previous_version": old.version})
            self._retire(old)
        return new

    def _retire(self, old: ServedModel) -> None:
        """Stop the old pool once requests in flight on it have finished, off this thread."""
        thread = threading.Thread(target=old.retire, name=f"retire-{old.name}-v{old.version}",
                                  daemon=True)
        thread.start()
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]

    def _record_failure(self, name: str, version: int | None, exc: ModelLoadError) -> None:
        failure = _failure(version, exc)
        with self._lock:
            current = self._status[name]
            error = current.error if current.model is not None else exc.message
            self._status[name] = dataclasses.replace(current, last_failure=failure, error=error)

    def _replace(self, name: str, **changes: Any) -> ModelStatus:
        with self._lock:
            self._status[name] = new = dataclasses.replace(self._status[name], **changes)
        return new

    def _config(self, name: str) -> ModelConfig:
        if name not in self._configs:
            raise NotFound(f"There is no model named {name!r}.", "model_not_found")
        return self._configs[name]

    def _list_versions(self, name: str) -> list[int]:
        versions = self.store.list_versions(name)
        self._versions[name] = versions
        return versions

    def versions(self, name: str) -> list[int]:
        """Versions of ``name`` in the store (the last known list if the store is unreachable)."""
        self._config(name)
        try:
            return self._list_versions(name)
        except ModelLoadError:
            return self._versions.get(name, [])

    def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.join(timeout=120)
            self._poller = None
        with self._lock:
            models = [s.model for s in self._status.values() if s.model]
            self._status = {n: ModelStatus(n, ModelState.LOADING, pinned=c.version)
                            for n, c in self._configs.items()}
        for model in models:
            model.close()
        for thread in self._retiring:
            thread.join(timeout=60)
        self._retiring = []

    def status(self, name: str) -> ModelStatus:
        self._config(name)
        with self._lock:
            return self._status[name]

    def statuses(self) -> list[ModelStatus]:
        with self._lock:
            return list(self._status.values())

    def names(self) -> list[str]:
        return list(self._configs)

    def ready(self) -> bool:
        return all(s.state is ModelState.AVAILABLE for s in self.statuses())

    @contextlib.contextmanager
    def lease(self, names: list[str] | None = None) -> Iterator[list[ServedModel]]:
        """The serving versions of ``names`` (default: every available model), held open
        for the block. Taken under the registry lock, so a swap happens either before (we get
        the new version) or after (the old one waits for us to finish)."""
        with self._lock:
            if names:
                models = [self._serving(self._status.get(n), n) for n in names]
            else:
                models = [s.model for s in self._status.values() if s.model is not None]
            for model in models:
                model.acquire()
        try:
            yield models
        finally:
            for model in models:
                model.release()

    def get(self, name: str) -> ServedModel:
        """The serving version of ``name``: NotFound if unknown, Unavailable if not loaded."""
        with self._lock:
            status = self._status.get(name)
        return self._serving(status, name)

    @staticmethod
    def _serving(status: ModelStatus | None, name: str) -> ServedModel:
        if status is None:
            raise NotFound(f"There is no model named {name!r}.", "model_not_found")
        if status.model is None:
            detail = f": {status.error}" if status.error else ""
            raise Unavailable(f"Model {name} is {status.state.value}{detail}", retry_after=5)
        return status.model

    def available(self) -> list[ServedModel]:
        return [s.model for s in self.statuses() if s.model is not None]


def _failure(version: int | None, exc: ModelLoadError) -> LoadFailure:
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return LoadFailure(version, exc.message, exc.code, at)
