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
from datetime import datetime, timezone
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
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


class LogWriter:
    """Writes the service's log records on one background thread once started.

    With 32 request threads each logging an access line and a prediction line, a handler's
    lock held across a write() becomes a queue of its own; with the writer, a request thread
    only enqueues. Before ``start`` (e.g. before the daemon fork: threads do not survive it)
    and after ``stop`` (the engine's last words), records are written directly, so none is lost.
    """

    def __init__(self, loggers: list[logging.Logger], handlers: list[logging.Handler]):
        self.loggers = loggers
        self.handlers = handlers
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._enqueue = _Enqueue(self._queue)
        self._listener: QueueListener | None = None

    def start(self) -> None:
        if self._listener is None and self.handlers:
            self._listener = QueueListener(self._queue, *self.handlers)
            self._listener.start()
            self._swap(self.handlers, [self._enqueue])

    def stop(self) -> None:
        if self._listener is not None:
            self._swap([self._enqueue], self.handlers)
            self._listener.stop()  # writes out whatever is still queued
            self._listener = None

    def _swap(self, old: list[logging.Handler], new: list[logging.Handler]) -> None:
        for logger in self.loggers:
            for handler in old:
                logger.removeHandler(handler)
            for handler in new:
                logger.addHandler(handler)


class _Enqueue(QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Resolve the message now (its arguments may change once the call returns); the
        # writer thread formats the record, exception included.
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
