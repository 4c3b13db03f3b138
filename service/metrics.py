"""Prometheus metrics: what each request, prediction and model load did (no HTTP here).

Two kinds of numbers live here:

- events, counted as they happen: requests, rejections, predictions, model loads. Their
  cost on the hot path is one counter increment or histogram observation each;
- state, read only when Prometheus scrapes: queue depth, busy workers, model states, the
  session pools' batch sizes and the input log's counters. A custom collector reads them
  from the model registry (and any prediction sink that has ``stats()``), so serving a
  request never pays for them.

Each app gets its own ``CollectorRegistry`` (``ServiceMetrics``), so several apps or tests
in one process never collide. Model loads happen below the web layer, once per process, so
they are counted in the process-wide ``LIFECYCLE`` registry by ``model_loaded`` (the app
subscribes it to the model registry's load hook) and re-exported by every app's registry;
so are the rate-limit backends' failures (``ratelimit_backend_errors``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from prometheus_client import (CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from .dataplane import ModelResult
    from .models.registry import ModelRegistry

# The "_created" series double the output and nobody here alerts on them.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
STATES = ("LOADING", "AVAILABLE", "FAILED")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# -- model lifecycle: process-wide ----------------------------------------------------------
LIFECYCLE = CollectorRegistry()
_MODEL_LOADS = Counter("digits_model_loads", "Model version loads by kind (load, reload) "
                       "and outcome (ok, failed).", ["model", "kind", "outcome"],
                       registry=LIFECYCLE)
_MODEL_LOAD_SECONDS = Histogram("digits_model_load_duration_seconds", "Time to read, verify, "
                                "import and warm a model version.", ["model", "kind"],
                                buckets=LOAD_BUCKETS, registry=LIFECYCLE)


def model_loaded(name: str, version: int | None, seconds: float, ok: bool,
                 kind: str = "load") -> None:
    """Count one load (``kind="load"``) or hot reload (``kind="reload"``) of a model.

    Subscribed by the app to the model registry's load hook (``ModelRegistry.on_load``).
    """
    _MODEL_LOADS.labels(name, kind, "ok" if ok else "failed").inc()
    _MODEL_LOAD_SECONDS.labels(name, kind).observe(max(0.0, seconds))


# -- rate-limit backends: process-wide, like the limiter (below the web layer) ----------------
_RATELIMIT_BACKEND_ERRORS = Counter("digits_ratelimit_backend_errors", "Rate-limit checks "
                                    "whose backend (redis, sqlite) could not be reached: "
                                    "requests admitted unchecked, or refused with 503 when "
                                    "[ratelimit] fail_open = False.", ["backend"],
                                    registry=LIFECYCLE)


def ratelimit_backend_errors(backend: str) -> Any:
    """The counter of ``backend``'s failures (its series shows from the first call, at 0)."""
    return _RATELIMIT_BACKEND_ERRORS.labels(backend)


# -- per app ---------------------------------------------------------------------------------
class ServiceMetrics:
    """One app's metrics; also the data plane's ``PredictionObserver``."""

    def __init__(self, models: "ModelRegistry",
                 stats_sources: Callable[[], Iterable[Any]] = lambda: ()):
        self.registry = CollectorRegistry()
        # In a cluster worker: every worker's posted families (see ``cluster_exposition``).
        self.posted: Callable[[], Iterable[dict[str, Any]]] | None = None
        self.requests = Counter("digits_http_requests", "HTTP requests by route template, "
                                "method, status and protocol (native, v2, tfserving, seed, "
                                "html).", ["route", "method", "status", "protocol"],
                                registry=self.registry)
        self.latency = Histogram("digits_http_request_duration_seconds", "Time from the "
                                 "request's start to the response's end, by route template.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.rejected = Counter("digits_http_rejected_requests", "Requests answered with an "
                                "error, by error code and status.", ["code", "status"],
                                registry=self.registry)
        self.slow_clients_cut = Counter("digits_http_slow_clients_cut", "Connections cut for "
                                        "arriving too slowly (web/connection_guard.py), by "
                                        "the part still arriving: request line, headers, "
                                        "body.", ["phase"], registry=self.registry)
        for phase in ("request line", "headers", "body"):
            self.slow_clients_cut.labels(phase)  # each series shows from the start, at 0
        self.prediction = Histogram("digits_prediction_duration_seconds", "Prediction time "
                                    "by model, version and phase (decode, preprocess, queue, "
                                    "inference, total; explain with explain=true).",
                                    ["model", "version", "phase"],
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.request_rows = Histogram("digits_prediction_batch_size", "Images per predict "
                                      "request, by model.", ["model"], buckets=BATCH_BUCKETS,
                                      registry=self.registry)
        # Each label set's series, looked up once: ``labels()`` validates and locks per call.
        self._series: dict[tuple, Any] = {}
        self._scraped = (ModelStateCollector(models), StatsCollector(stats_sources))
        for collector in self._scraped:
            self.registry.register(collector)
        self.registry.register(_Reexport(LIFECYCLE))

    # PredictionObserver
    def observed(self, result: "ModelResult", batch_size: int) -> None:
        for phase, ms in result.timing_ms.items():
            self._child(self.prediction, result.model, result.version, phase).observe(ms / 1000.0)
        self._child(self.request_rows, result.model).observe(batch_size)

    def request_done(self, route: str, method: str, status: int, seconds: float,
                     error_code: str | None, protocol: str = "native") -> None:
        self._child(self.requests, route, method, status, protocol).inc()
        self._child(self.latency, route).observe(seconds)
        if status >= 400:
            self._child(self.rejected, error_code or f"http_{status}", status).inc()

    def _child(self, metric: Any, *labels: Any) -> Any:
        """``metric.labels(*labels)`` (values as strings), remembered."""
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*map(str, labels))
        return child

    def exposition(self) -> bytes:
        if self.posted is None:
            return generate_latest(self.registry)
        return cluster_exposition(self.posted)

    def local_families(self) -> list[dict[str, Any]]:
        """This process's scrape-time families as plain data, for the cluster board."""
        return [{"name": f.name, "documentation": f.documentation, "type": f.type,
                 "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                for collector in self._scraped for f in collector.collect()]


def cluster_exposition(posted: Callable[[], Iterable[dict[str, Any]]]) -> bytes:
    """Every worker's counters and histograms summed (prometheus_client's multiprocess
    files, ``PROMETHEUS_MULTIPROC_DIR``), and each worker's posted families by ``worker``."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    registry.register(_Posted(posted))
    return generate_latest(registry)


class ModelStateCollector:
    """Scrape-time gauges read from the registry: state, queue, busy workers, run batch sizes."""

    def __init__(self, models: "ModelRegistry"):
        self.models = models

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("digits_model_state", "1 for the state each configured "
                                  "model is in.", labels=["model", "state"])
        queue = GaugeMetricFamily("digits_model_queue_depth", "Submissions waiting for a "
                                  "session.", labels=["model"])
        busy = GaugeMetricFamily("digits_model_busy_workers", "Pool workers inside "
                                 "session.run now.", labels=["model"])
        workers = GaugeMetricFamily("digits_model_workers", "Pool workers (sessions).",
                                    labels=["model"])
        runs = HistogramMetricFamily("digits_session_run_batch_size", "Rows per session.run "
                                     "(dynamic batching merges requests).",
                                     labels=["model", "version"])
        restarts = CounterMetricFamily("digits_model_worker_restarts", "Session workers "
                                       "replaced by the supervisor, by reason (crashed, "
                                       "wedged).", labels=["model", "version", "reason"])
        for status in self.models.statuses():
            for name in STATES:
                state.add_metric([status.name, name], float(status.state.value == name))
            model = status.model
            if model is None:
                continue
            pool = model.pool
            queue.add_metric([status.name], pool.queue_depth)
            busy.add_metric([status.name], pool.busy)
            workers.add_metric([status.name], pool.settings.pool_size)
            buckets, total = _cumulative(dict(pool.stats.batch_sizes), BATCH_BUCKETS)
            runs.add_metric([status.name, str(model.version)], buckets, total)
            for reason, count in sorted(pool.stats.restarts.items()):
                restarts.add_metric([status.name, str(model.version), reason], count)
        yield from (state, queue, busy, workers, runs, restarts)


class StatsCollector:
    """The input log's counters, from any source with ``stats()`` (read at scrape time).

    ``stats()`` returns ``{"written": int, "dropped_by_reason": {reason: int},
    "queue_depth": int, "database_errors": int}``; missing keys are skipped.
    """

    def __init__(self, sources: Callable[[], Iterable[Any]]):
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        written = CounterMetricFamily("digits_inputlog_written", "Input log records written.")
        dropped = CounterMetricFamily("digits_inputlog_dropped", "Input log records dropped, "
                                      "by reason.", labels=["reason"])
        queue = GaugeMetricFamily("digits_inputlog_queue_depth", "Input log writes pending.")
        errors = CounterMetricFamily("digits_inputlog_database_errors", "Failed attempts to "
                                     "write to a shared input log database (each retried).")
        found = False
        for source in self.sources():
            stats = getattr(source, "stats", None)
            if not callable(stats):
                continue
            values = stats() or {}
            found = True
            if "written" in values:
                written.add_metric([], values["written"])
            for reason, count in sorted((values.get("dropped_by_reason") or {}).items()):
                dropped.add_metric([str(reason)], count)
            if "queue_depth" in values:
                queue.add_metric([], values["queue_depth"])
            if "database_errors" in values:
                errors.add_metric([], values["database_errors"])
        if found:
            yield from (written, dropped, queue, errors)


class _Posted:
    """Families the workers posted (``local_families``), merged by name, labelled by worker."""

    def __init__(self, posted: Callable[[], Iterable[dict[str, Any]]]):
        self.posted = posted

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for family in self.posted():
            metric = merged.get(family["name"])
            if metric is None:
                metric = merged[family["name"]] = Metric(family["name"],
                                                         family["documentation"],
                                                         family["type"])
            for name, labels, value in family["samples"]:
                metric.add_sample(name, {**labels, "worker": family["worker"]}, value)
        return iter(merged.values())


class _Reexport:
    """Collects another registry's metrics into this one (the process-wide lifecycle)."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return self.source.collect()


def _cumulative(counts: dict[int, int], bounds: tuple[int, ...]):
    """A {size: count} tally as Prometheus buckets: [(le, cumulative count)...], and the sum."""
    buckets = [(floatToGoString(bound), sum(c for size, c in counts.items() if size <= bound))
               for bound in bounds]
    buckets.append(("+Inf", sum(counts.values())))
    return buckets, float(sum(size * c for size, c in counts.items()))
