"""Every request counted, timed and logged once; ``GET /metrics`` and ``GET /openapi.json``.

``tools.observe`` notes the start of each request and, once its response is written
(``on_end_request``, which runs for errors too), records its route template, method, status
and latency in the app's ``ServiceMetrics`` and writes its access line. CherryPy's own access
line is switched off for the app: it cannot know the duration, and one line per request is
enough.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import cherrypy

from ..dataplane import DataPlane
from ..logs import ACCESS_LOGGER, Deferred, PredictionLog
from ..metrics import CONTENT_TYPE, ServiceMetrics
from ..errors import http_code
from .dispatch import UNMATCHED

access_log = logging.getLogger(ACCESS_LOGGER)
log = logging.getLogger("service.web")

# -- the tool --------------------------------------------------------------------------------
def _started() -> None:
    cherrypy.serving.request.observe_started = time.perf_counter()


def _ended(metrics: ServiceMetrics | None = None) -> None:
    """on_end_request: count the request and write its access line; never fails the request."""
    request, response = cherrypy.serving.request, cherrypy.serving.response
    try:
        seconds = time.perf_counter() - getattr(request, "observe_started", time.perf_counter())
        status = _status_code(response.status)
        route = getattr(request, "route_template", UNMATCHED)  # set by the dispatcher
        code = getattr(request, "error_code", None)
        if status >= 400 and code is None:
            code = http_code(status)
        if metrics is not None:
            matched = getattr(request, "route", None)
            metrics.request_done(route, request.method, status, seconds, code,
                                 matched.protocol if matched is not None else "native")
        _write_access_line(request, response, route, status, seconds, code)
    except Exception:
        log.error("recording the request failed", exc_info=True)


class ObserveTool(cherrypy.Tool):
    """``tools.observe``: a start hook (first of all, so body-limit refusals are timed too)
    and an end hook that gets the tool's config (``tools.observe.metrics``)."""

    def __init__(self) -> None:
        super().__init__("on_start_resource", _started, name="observe")

    def _setup(self) -> None:
        conf = self._merged_args()
        conf.pop("priority", None)
        hooks = cherrypy.serving.request.hooks
        hooks.attach("on_start_resource", _started, priority=1)
        hooks.attach("on_end_request", _ended, priority=90, **conf)


cherrypy.tools.observe = ObserveTool()


def tool_config(metrics: ServiceMetrics) -> dict[str, Any]:
    """The app-wide ("/") config that turns the tool on."""
    return {"tools.observe.on": True, "tools.observe.metrics": metrics}


def take_over_access_log(app: cherrypy.Application) -> None:
    """Silence CherryPy's access line for ``app``: ``_ended`` writes a richer one."""
    app.log.access = lambda: None


def _status_code(status: Any) -> int:
    try:
        return int(str(status).split()[0])
    except (ValueError, IndexError):
        return 500


def _write_access_line(request: Any, response: Any, route: str, status: int, seconds: float,
                       code: str | None) -> None:
    headers = response.headers
    size = headers.get("Content-Length")
    fields = {
        "event": "access", "method": request.method, "path": request.path_info,
        "query": request.query_string or None, "route": route, "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes": int(size) if str(size).isdigit() else None,
        "client": request.remote.ip, "request_id": headers.get("X-Request-ID"),
        "error": code,
    }
    line = AccessLine(time.time(), request.remote.ip, request.request_line, status, size,
                      request.headers.get("Referer", ""), request.headers.get("User-Agent", ""),
                      seconds)
    access_log.info(line, extra=fields)


class AccessLine(Deferred):
    """CherryPy's access line (Apache combined format) with the duration appended, formatted
    by the log writer, not the request thread."""

    __slots__ = ("when", "client", "request_line", "status", "size", "referer", "agent",
                 "seconds")
    MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
              "Dec")

    def __init__(self, when: float, client: str | None, request_line: str, status: int,
                 size: str | None, referer: str, agent: str, seconds: float):
        self.when, self.client, self.request_line, self.status = when, client, request_line, status
        self.size, self.referer, self.agent, self.seconds = size, referer, agent, seconds

    def __str__(self) -> str:
        t = time.localtime(self.when)  # as cherrypy.log.time() dates it
        date = (f"[{t.tm_mday:02d}/{self.MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}]")
        return '%s - - %s "%s" %d %s "%s" "%s" %.1fms' % (
            self.client or "-", date, str(self.request_line).replace('"', '\\"'),
            self.status, self.size or "-", self.referer, self.agent, self.seconds * 1000)


# -- handlers (routes.py says which path and method each serves) -------------------------
def observe(plane: DataPlane) -> ServiceMetrics:
    """Count and log ``plane``'s predictions: the app's metrics, once at start-up."""
    metrics = ServiceMetrics(plane.registry, lambda: plane.sinks)
    plane.observers.append(metrics)
    plane.sinks.append(PredictionLog())
    return metrics


def metrics(app: Any, /, **_: Any) -> bytes:
    cherrypy.response.headers["Content-Type"] = CONTENT_TYPE
    return app.service_metrics.exposition()


def openapi_json(app: Any, /, **_: Any) -> bytes:
    cherrypy.response.headers["Content-Type"] = "application/json"
    return app.openapi_bytes
