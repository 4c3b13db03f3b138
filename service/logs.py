"""Where the service's logs go and what each line looks like.

Three streams share the same handlers and format: the ``service`` loggers (model lifecycle,
predictions, warnings), CherryPy's error log (engine events, tracebacks) and the access log
(one line per request, written by ``web/observability.py``). ``[logging] format = "json"``
writes one JSON object per line: ``ts``, ``level``, ``logger``, ``message`` and every field
passed with ``extra=``; ``"text"`` keeps the human format. Lines go to stderr, or to
``[logging] file`` with rotation; CherryPy's ``log.error_file``/``log.access_file`` still
receive them too.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import sys
import threading
from datetime import datetime, timezone
from logging.handlers import QueueHandler, RotatingFileHandler
from typing import TYPE_CHECKING, Any

from .config import LogSettings

if TYPE_CHECKING:
    from .dataplane import Instance, ModelResult, RequestContext

SERVICE_LOGGER = "service"
ACCESS_LOGGER = "cherrypy.access"
ERROR_LOGGER = "cherrypy.error"
TEXT_FORMAT = "[%(asctime)s] %(name)s %(levelname)s %(message)s"
CHERRYPY_DATE = re.compile(r"^\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}\] ")  # JSON has "ts"
# Every attribute a bare LogRecord has: anything else on a record came from ``extra=``.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message",
                                                                             "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra=`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc)
                          .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": CHERRYPY_DATE.sub("", record.getMessage(), count=1),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The human format: CherryPy's lines as CherryPy writes them, ours with a prefix."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith("cherrypy."):  # already dated and shaped by CherryPy
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + self.formatException(record.exc_info)
            return text
        return super().format(record)


def formatter_for(settings: LogSettings) -> logging.Formatter:
    return JsonFormatter() if settings.format == "json" else TextFormatter()


LINGER_S = 0.02  # once a record arrives, the writer waits this long for more


class LogWriter:
    """Writes the service's log records on one background thread once started.

    A request thread only enqueues its records (two a request: the access line and the
    prediction). The writer wakes once per burst, not per record: it lingers ``LINGER_S``
    after the first, then formats what came and writes it with one write and one flush per
    handler -- under load, a few wake-ups a second instead of two a request, each of which
    the request threads would wait on for the interpreter lock. Before ``start`` (e.g.
    before the daemon fork: threads do not survive it) and after ``stop`` (the engine's last
    words), records are written directly, so none is lost.
    """

    def __init__(self, loggers: list[logging.Logger], handlers: list[logging.Handler]):
        self.loggers = loggers
        self.handlers = handlers
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._enqueue = _Enqueue(self._queue)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        if self._thread is None and self.handlers:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
            self._thread.start()
            self._swap(self.handlers, [self._enqueue])

    def stop(self) -> None:
        if self._thread is not None:
            self._swap([self._enqueue], self.handlers)
            self._stopping.set()
            self._queue.put(_STOP)
            self._thread.join()  # it writes out whatever is still queued
            self._thread = None

    def _swap(self, old: list[logging.Handler], new: list[logging.Handler]) -> None:
        for logger in self.loggers:
            for handler in old:
                logger.removeHandler(handler)
            for handler in new:
                logger.addHandler(handler)

    def _run(self) -> None:
        while True:
            records = [self._queue.get()]
            self._stopping.wait(LINGER_S)
            while True:
                try:
                    records.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in records
            records = [r for r in records if r is not _STOP]
            for handler in self.handlers:
                write_batch(handler, records)
            if stop:
                return


_STOP = object()  # the writer's last item: stop() puts it after unhooking the queue


def write_batch(handler: logging.Handler, records: list[logging.LogRecord]) -> None:
    """``records`` through ``handler`` as one write and one flush, if it is a stream (the
    file's rotation checked once for the batch); any other handler gets them one by one."""
    if not isinstance(handler, logging.StreamHandler):
        for record in records:
            handler.handle(record)
        return
    wanted = [r for r in records if r.levelno >= handler.level and handler.filter(r)]
    if not wanted:
        return
    try:
        text = "".join([handler.format(r) + handler.terminator for r in wanted])
        with handler.lock:
            if isinstance(handler, RotatingFileHandler) and handler.maxBytes > 0:
                handler.stream.seek(0, 2)  # as RotatingFileHandler.shouldRollover does
                if handler.stream.tell() and handler.stream.tell() + len(text) >= handler.maxBytes:
                    handler.doRollover()
            handler.stream.write(text)
            handler.flush()
    except Exception:
        handler.handleError(wanted[-1])


class Deferred:
    """A log message whose parts are fixed when it is made, so that only the writer thread
    formats it (``str()``); the request thread does not (see ``_Enqueue``)."""

    __slots__ = ()


class _Enqueue(QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Resolve the message now (its arguments may change once the call returns), unless
        # it cannot change; the writer thread formats the record, exception included.
        if not isinstance(record.msg, Deferred):
            record.msg = record.getMessage()
            record.args = None
        return record


def configure(settings: LogSettings, screen: bool) -> LogWriter:
    """Route every stream to one set of handlers in one format.

    Call after CherryPy's config is applied with ``log.screen`` off: CherryPy's screen
    handlers would write in their own format (and access lines to stdout); ``screen`` says
    whether stderr should get the logs instead. A ``[logging] file`` replaces stderr.
    """
    formatter = formatter_for(settings)
    _skip_what_no_format_shows()
    ours: list[logging.Handler] = []
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        ours.append(RotatingFileHandler(settings.file, maxBytes=settings.max_bytes,
                                        backupCount=settings.backup_count, encoding="utf-8"))
    elif screen:
        ours.append(logging.StreamHandler(sys.stderr))
    for name in (ERROR_LOGGER, ACCESS_LOGGER):
        logger = logging.getLogger(name)
        _replace_ours(logger, ours)
        for handler in logger.handlers:
            handler.setFormatter(formatter)
    service = logging.getLogger(SERVICE_LOGGER)
    service.setLevel(logging.INFO)
    service.propagate = False
    service.handlers = list(logging.getLogger(ERROR_LOGGER).handlers)
    loggers = [logging.getLogger(n) for n in (ERROR_LOGGER, ACCESS_LOGGER, SERVICE_LOGGER)]
    return LogWriter(loggers, ours)


def _skip_what_no_format_shows() -> None:
    """Neither format prints a record's caller, thread or process: do not look them up
    (the logging HOWTO's "Optimization"); it halves the cost of a record."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _replace_ours(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    """Swap in ``handlers``, dropping any a previous ``configure`` added (tests mount twice)."""
    for old in [h for h in logger.handlers if getattr(h, "_digits", False)]:
        logger.removeHandler(old)
        old.close()
    for handler in handlers:
        handler._digits = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


class PredictionLog:
    """A prediction sink: one log record per model per successful predict request."""

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or logging.getLogger("service.predictions")

    def record(self, context: "RequestContext", instances: list["Instance"],
               results: dict[str, "ModelResult"]) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        for result in results.values():
            self.log.info(
                "prediction %s v%d: %d image(s) in %.1f ms", result.model, result.version,
                len(instances), result.timing_ms.get("total", 0.0),
                extra={"event": "prediction", "model": result.model, "version": result.version,
                       "batch_size": len(instances), "timing_ms": result.timing_ms,
                       "request_id": context.request_id, "route": context.route})
