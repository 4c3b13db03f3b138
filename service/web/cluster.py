"""One worker of a cluster, as the web layer sees it: what it posts on the board and what it
reads there for the routes that speak for the whole cluster.

- ``/status`` lists every worker with its models and state; ``/readyz`` is ready only when
  every worker has its models;
- ``/metrics`` sums every worker (prometheus_client's multiprocess files), and adds each
  worker's scrape-time gauges (queue depth, pool state, input log counters) labelled by
  worker, from the entries the workers post about once a second;
- a hot reload asked of one worker is posted for the others, which follow within a
  second; the answer waits until every worker serves the new version.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

from cherrypy.process.plugins import SimplePlugin

from ..cluster.board import PUBLISH_INTERVAL_S, Board
from ..cluster.identity import Worker
from ..errors import ServiceError
from ..models.registry import ModelRegistry, ModelState

if TYPE_CHECKING:
    from ..metrics import ServiceMetrics

log = logging.getLogger("service.web")

CONVERGE_TIMEOUT_S = 60.0  # a reload's answer waits this long for the other workers


class ClusterMember:
    """This worker's entry on the board, and the cluster as the board shows it."""

    def __init__(self, worker: Worker, registry: ModelRegistry):
        self.worker = worker
        self.board = Board(worker.run_dir)
        self.registry = registry
        self.metrics: "ServiceMetrics | None" = None  # set by the app once built
        self.state = "starting"
        self._reloads_seen: dict[str, int] = {}
        self._publish_lock = threading.Lock()

    # -- what this worker posts -----------------------------------------------------------------
    def entry(self) -> dict[str, Any]:
        statuses = self.registry.statuses()
        return {"state": self.state,
                "ready": self.state == "serving" and all(
                    s.state is ModelState.AVAILABLE for s in statuses),
                "models": {s.name: {"state": s.state.value, "version": s.version}
                           for s in statuses},
                "metrics": self.metrics.local_families() if self.metrics else []}

    def publish(self, state: str | None = None) -> None:
        with self._publish_lock:
            if state is not None:
                self.state = state
            self.board.publish(self.worker, self.entry())

    # -- what this worker reads -------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        """Every slot: its process, restarts, last exit, and (while fresh) state and models."""
        found = []
        for slot in self.board.current():
            entry = slot["entry"] or {}
            found.append({"name": f"worker-{slot['slot']}.{slot['generation']}",
                          "pid": slot["pid"] or None, "state": entry.get("state", "down"),
                          "ready": slot["ready"], "restarts": slot["restarts"],
                          "last_exit": slot["last_exit"], "models": entry.get("models", {})})
        return found

    def not_ready(self) -> list[str]:
        """The workers that are not serving all their models (empty: the cluster is ready)."""
        return [w["name"] for w in self.workers() if not w["ready"]]

    def families(self) -> Iterator[dict[str, Any]]:
        """Each current worker's posted metric families, with its name."""
        for slot in self.board.current():
            if slot["entry"] is not None:
                name = f"worker-{slot['slot']}"
                for family in slot["entry"].get("metrics", []):
                    yield {**family, "worker": name}

    # -- hot reloads ----------------------------------------------------------------------------
    def broadcast_reload(self, model: str, asked: int | None, serving: int | None) -> dict:
        """Post a reload this worker did; wait until every worker serves ``serving``."""
        request = self.board.post_reload(model, asked, self.worker.name)
        self._reloads_seen[model] = request.seq
        self.publish()
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while True:
            versions = {w["name"]: w["models"].get(model, {}).get("version")
                        for w in self.workers()}
            if all(v == serving for v in versions.values()) or time.monotonic() > deadline:
                return versions
            time.sleep(0.1)

    def follow_reloads(self) -> None:
        """Do the reloads other workers posted since the last look (a new worker: all)."""
        for request in self.board.reloads():
            if request.seq <= self._reloads_seen.get(request.model, 0):
                continue
            self._reloads_seen[request.model] = request.seq
            if request.model not in self.registry.names():
                continue
            try:
                status = self.registry.reload(request.model, request.version)
                log.info("followed %s's reload of %s: version %s", request.by, request.model,
                         status.version)
            except ServiceError as exc:
                log.error("following %s's reload of %s failed: %s", request.by,
                          request.model, exc.message)
            self.publish()


class ClusterPlugin(SimplePlugin):
    """Posts this worker's entry while it serves, and follows the others' reloads."""

    def __init__(self, bus, member: ClusterMember):
        super().__init__(bus)
        self.member = member
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self) -> None:
        super().subscribe()
        # A replacement catches up with the reloads (and pins) posted before it started:
        # after the registry loads (72), before the HTTP server accepts (75).
        self.bus.subscribe("start", self.member.follow_reloads, priority=74)

    def unsubscribe(self) -> None:
        super().unsubscribe()
        self.bus.unsubscribe("start", self.member.follow_reloads)

    def start(self) -> None:
        # After the HTTP server (75): this worker answers now.
        self.member.publish("serving")
        log.info("%s (pid %d) serving", self.member.worker.name, os.getpid())
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="cluster board", daemon=True)
        self._thread.start()

    start.priority = 80

    def stop(self) -> None:
        # Before the HTTP server stops (25): the others stop counting on this one.
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.member.publish("stopping")

    stop.priority = 10

    def exit(self) -> None:
        self.member.board.retract(self.member.worker)

    def _run(self) -> None:
        while not self._stopping.wait(PUBLISH_INTERVAL_S):
            try:
                self.member.follow_reloads()
                self.member.publish()
            except Exception:  # the board must not stop this worker serving
                log.error("cluster board update failed", exc_info=True)
