"""Supervision of a session pool's workers.

A supervisor thread replaces a worker that died or whose ``session.run`` has taken longer
than ``worker_timeout_s``: it fails the requests that worker held with ``Unavailable``
(code ``worker_restarted``), retires it, and has the pool start a fresh worker (and session).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Protocol

from ..config import PoolSettings
from ..errors import Unavailable
from .batching import Batcher, Submission

log = logging.getLogger("service.models")


class Worker:
    """One worker thread and what the supervisor needs to see of it.

    The worker thread writes ``running_since`` (and its batcher's batch and carry); the
    supervisor reads them and sets ``retired`` (under the pool lock while a run is in progress).
    """

    def __init__(self, batcher: Batcher) -> None:
        self.thread: threading.Thread | None = None
        self.opened = threading.Event()             # set once the session exists or failed
        self.open_error: BaseException | None = None
        self.session: Any = None                    # the worker's own; exposed for tests
        self.batcher = batcher
        self.running_since: float | None = None     # monotonic start of the run in progress
        self.stopped = False                        # left on STOP: a clean exit
        self.retired = False                        # replaced: discard any result, exit

    def held(self) -> list[Submission]:
        """Submissions taken off the queue and not yet answered."""
        return self.batcher.held()


class SupervisedPool(Protocol):
    """What a supervisor needs of its pool."""

    name: str
    settings: PoolSettings

    def active_workers(self) -> list[Worker]: ...

    def retire_if_wedged(self, worker: Worker, now: float) -> bool: ...

    def replace_worker(self, old: Worker) -> None: ...


class Supervisor:
    """Checks ``pool``'s workers every ``check_interval()`` from a daemon thread."""

    def __init__(self, pool: SupervisedPool, restarts: Counter) -> None:
        self.pool = pool
        self.restarts = restarts  # by reason: "crashed", "wedged"
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.pool.name}-supervisor",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        interval = self.pool.settings.check_interval()
        while not self._halt.wait(interval):
            try:
                self.check()
            except Exception:  # one failed check must not end supervision
                log.exception("model %s: worker supervision check failed", self.pool.name)

    def check(self) -> None:
        """Replace every worker that crashed, wedged or failed to open its session."""
        now = time.monotonic()
        for worker in self.pool.active_workers():
            # A worker already retired here was left in place only if its replacement failed
            # to start a thread: try again.
            if not worker.retired:
                reason = self._fault(worker, now)
                if reason is None:
                    continue
                self._report(worker, reason)
            self.pool.replace_worker(worker)

    def _fault(self, worker: Worker, now: float) -> str | None:
        """Why ``worker`` must be replaced (it is then retired), or None if it is healthy."""
        if worker.thread.is_alive():
            return "wedged" if self.pool.retire_if_wedged(worker, now) else None
        if worker.stopped:
            return None  # left on STOP during stop()
        worker.retired = True
        return "crashed" if worker.open_error is None else "open_failed"

    def _report(self, worker: Worker, reason: str) -> None:
        """Log the fault and fail every request the retired worker held."""
        name = self.pool.name
        if reason == "open_failed":
            log.error("model %s: replacement worker %s could not open its session (%s); "
                      "retrying", name, worker.thread.name, worker.open_error,
                      extra={"event": "worker_open_failed", "model": name})
            return
        self.restarts[reason] += 1
        held = worker.held()
        log.warning("model %s: session worker %s %s; failing the %d request(s) it held and "
                    "starting a replacement", name, worker.thread.name, reason, len(held),
                    extra={"event": "worker_restart", "model": name, "reason": reason})
        for item in held:
            item.fail(Unavailable(f"model {name}: the session worker {reason} and was "
                                  "restarted; try again", "worker_restarted"))
