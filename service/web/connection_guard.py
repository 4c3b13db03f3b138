"""Below CherryPy: slow clients cannot hold worker threads, and a full accept queue answers 503.

cheroot reads a request (request line, headers, body) in a worker thread, and its
``server.socket_timeout`` applies to each recv, so a client trickling a byte every few
seconds holds a worker for as long as it likes. ``GuardedServer`` (a CherryPy WSGI server,
installed as ``cherrypy.server.instance``) gives each request a total deadline instead:

- a worker starts reading a request (``GuardedRequest.__init__``): the request is watched,
  one dict insert. Idle keep-alive connections wait in cheroot's selector, not in a worker,
  and are not watched: cheroot's own ``socket_timeout`` still closes them;
- the request is over (the connection's ``communicate()`` returns): one dict delete. A
  request whose body had arrived in full by its deadline is dropped uncut: the time the
  app spends on it is not the client's;
- one watchdog thread looks every ``interval_s``. A request still arriving after
  ``[service] client_timeout_s`` is cut: while the request line or headers trickle, the
  watchdog writes a 408 JSON error itself (non-blocking) and shuts the socket down, which
  ends the worker's recv; while the body trickles, it shuts the reading side only and the
  app's next read raises a 408 that CherryPy answers in JSON as usual. Either way the cut is
  logged once and counted once: ``slow_client`` 408 here for a header cut, ``request_timeout``
  408 by the app's own accounting for a body cut.

With ``server.accepted_queue_size`` bounded, cheroot refuses a connection when the queue of
connections waiting for a worker is full; here it gets a JSON 503 with ``Retry-After``,
written straight to the socket, counted as ``overloaded``.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Callable

import cherrypy
from cheroot.server import ChunkedRFile, HTTPConnection, KnownLengthRFile
from cherrypy._cpwsgi_server import CPWSGIHTTPRequest, CPWSGIServer

from ..errors import http_code
from .responses import error_payload

if TYPE_CHECKING:
    from ..metrics import ServiceMetrics

log = logging.getLogger("service.web")

Reject = Callable[[str, int], None]  # (error code, HTTP status), once per refused request
REQUEST_LINE, HEADERS, BODY = "request line", "headers", "body"
REFUSAL_LOG_INTERVAL_S = 10.0  # under overload, one summary line rather than one per connection
MAX_DRAIN_BYTES = 65536


def raw_response(status: str, code: str, message: str, headers: tuple[str, ...] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with our JSON error body."""
    body = json.dumps(error_payload(code, message), separators=(",", ":")).encode()
    lines = (f"HTTP/1.1 {status}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *headers, "Connection: close", "", "")
    return "\r\n".join(lines).encode("latin-1") + body


OVERLOADED = raw_response("503 Service Unavailable", "overloaded",
                          "The server is busy; retry in a second.", ("Retry-After: 1",))


def timeout_message(timeout_s: float) -> str:
    return f"The request did not arrive in full within {timeout_s:g} s."


def count_rejections(metrics: "ServiceMetrics") -> Reject:
    """A ``Reject`` that counts in ``digits_http_rejected_requests_total``."""
    return lambda code, status: metrics.rejected.labels(code, str(status)).inc()


def install(timeout_s: float, metrics: "ServiceMetrics",
            adapter: Any = None) -> "GuardedServer":
    """Make ``cherrypy.server`` (already configured) serve through a ``GuardedServer``."""
    adapter = adapter or cherrypy.server
    server = GuardedServer(adapter, ConnectionGuard(timeout_s, count_rejections(metrics)))
    adapter.instance = server
    return server


# -- the watchdog ----------------------------------------------------------------------------
class ConnectionGuard:
    """Requests being read, by connection, and the one thread that cuts the late ones.

    ``timeout_s`` 0 watches nothing. ``on_reject`` runs on the watchdog and accept threads.
    """

    def __init__(self, timeout_s: float, on_reject: Reject, interval_s: float = 0.5):
        self.timeout_s = timeout_s
        self.on_reject = on_reject
        self.interval_s = interval_s
        self.enabled = timeout_s > 0
        self.timeout_response = raw_response("408 Request Timeout", "request_timeout",
                                             timeout_message(timeout_s))
        self._watched: dict[Any, Any] = {}  # connection -> the GuardedRequest being read
        # Held while cutting and while releasing: the worker closes the socket only after
        # release(), so the watchdog never touches a closed (or reused) descriptor.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # hot path: one insert, one delete per request
    def watch(self, conn: Any, request: Any) -> None:
        if self.enabled:
            request.guard_started = time.monotonic()
            self._watched[conn] = request

    def release(self, conn: Any) -> None:
        if self.enabled:
            with self._lock:
                self._watched.pop(conn, None)

    def watching(self) -> int:
        return len(self._watched)

    # the watchdog thread
    def start(self) -> None:
        if not self.enabled or (self._thread is not None and self._thread.is_alive()):
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="connection guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.sweep(time.monotonic())
            except Exception:  # the watchdog must outlive any one bad connection
                log.error("connection guard sweep failed", exc_info=True)

    def sweep(self, now: float) -> int:
        """Cut every request still arriving ``timeout_s`` after it started; how many were cut."""
        late = now - self.timeout_s
        expired = [(c, r) for c, r in self._watched.copy().items() if r.guard_started <= late]
        return sum(self._expire(conn, request, now) for conn, request in expired)

    def _expire(self, conn: Any, request: Any, now: float) -> bool:
        with self._lock:
            if self._watched.get(conn) is not request:
                return False  # finished (or a new request started) since the snapshot
            del self._watched[conn]
            phase = request_phase(request)
            if phase == BODY and body_complete(request):
                return False  # arrived in time; the app is working on it
            request.guard_cut = True
            if phase == BODY:
                # the app's next read raises 408 (GuardedBody); CherryPy writes the answer
                _shutdown(conn.socket, socket.SHUT_RD)
            else:
                _write_nowait(conn.socket, self.timeout_response)
                _shutdown(conn.socket, socket.SHUT_RDWR)
        self._report(conn, phase, now - request.guard_started)
        return True

    def _report(self, conn: Any, phase: str, seconds: float) -> None:
        client = f"{conn.remote_addr}:{conn.remote_port}"
        log.warning("slow client %s cut after %.1f s, still sending its %s (client_timeout_s"
                    " = %g)", client, seconds, phase, self.timeout_s,
                    extra={"event": "slow_client", "client": client, "phase": phase,
                           "seconds": round(seconds, 3)})
        if phase != BODY:  # a body cut reaches the app, which counts its 408 request_timeout
            self.reject("slow_client", 408)

    def reject(self, code: str, status: int) -> None:
        """Count one refused request; counting must never break serving."""
        try:
            self.on_reject(code, status)
        except Exception:
            log.error("counting a %s refusal failed", code, exc_info=True)


def request_phase(request: Any) -> str:
    """What the request was reading: cheroot sets these flags as each part completes."""
    if not request.started_request:
        return REQUEST_LINE
    return BODY if request.ready else HEADERS


def body_complete(request: Any) -> bool:
    body = getattr(request, "rfile", None)
    return isinstance(body, GuardedBody) and body.complete


def _write_nowait(sock: Any, data: bytes) -> bool:
    """Write ``data`` now or not at all: a worker may be blocked reading this socket."""
    # A socket in timeout mode is non-blocking underneath (see the socket docs), so
    # os.write cannot block; TLS sockets (a subclass or pyOpenSSL) need their own framing.
    if type(sock) is not socket.socket or sock.gettimeout() is None:
        return False
    try:
        return os.write(sock.fileno(), data) == len(data)
    except OSError:
        return False


def _shutdown(sock: Any, how: int) -> None:
    """Shut ``sock`` down without closing it: the worker reading it sees EOF and cleans up."""
    try:
        if hasattr(sock, "sock_shutdown"):  # pyOpenSSL
            sock.sock_shutdown(how)
        else:  # the plain call even for ssl.SSLSocket: no TLS teardown from this thread
            socket.socket.shutdown(sock, how)
    except OSError:
        pass


# -- cheroot classes -------------------------------------------------------------------------
class GuardedBody:
    """cheroot's body reader, as the app sees it; reads after a cut answer 408."""

    def __init__(self, body: KnownLengthRFile | ChunkedRFile, request: "GuardedRequest"):
        self._body = body
        self._request = request

    @property
    def complete(self) -> bool:
        body = self._body
        return body.closed if isinstance(body, ChunkedRFile) else body.remaining <= 0

    def read(self, size: int | None = None) -> bytes:
        return self._call(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._call(self._body.readline, size)

    def readlines(self, sizehint: int = 0) -> list[bytes]:
        return self._call(self._body.readlines, sizehint)

    def __iter__(self) -> "GuardedBody":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)  # remaining, closed, read_trailer_lines, close...

    def _call(self, method: Callable, *args: Any) -> Any:
        # After a cut the socket reads EOF: a short body must not reach the app as if whole.
        try:
            data = method(*args)
        except Exception:
            error = self._timeout_error()
            if error is None:
                raise
            raise error from None
        error = self._timeout_error()
        if error is not None:
            raise error
        return data

    def _timeout_error(self) -> cherrypy.HTTPError | None:
        request = self._request
        if not request.guard_cut or request.sent_headers:
            return None  # not cut, or cheroot itself is skipping the rest of the body
        request.close_connection = True  # the rest of the body never comes
        return cherrypy.HTTPError(408, timeout_message(request.server.guard.timeout_s))


class GuardedRequest(CPWSGIHTTPRequest):
    """A request the guard watches from the moment a worker starts reading it."""

    guard_cut = False
    guard_started = 0.0

    def __init__(self, server: "GuardedServer", conn: HTTPConnection):
        super().__init__(server, conn)
        server.guard.watch(conn, self)

    def simple_response(self, status: str, msg: str | bytes = "") -> None:
        """cheroot's own refusals (a malformed request line or header, 413, 414, 505...) in
        our JSON error shape, counted like every other refusal; 1xx stay cheroot's."""
        number = int(str(status)[:3])
        if number < 400:
            return super().simple_response(status, msg)
        text = msg.decode("latin-1") if isinstance(msg, bytes) else str(msg)
        code = http_code(number)
        self.close_connection = True  # what follows a malformed request cannot be trusted
        self.server.guard.reject(code, number)
        with suppress(OSError):
            self.conn.wfile.write(raw_response(str(status), code, text or str(status)[4:]))

    # cheroot creates the body reader inside respond() and hands it to the app at once;
    # wrapping it on assignment is the one place to step in between.
    @property
    def rfile(self) -> Any:
        return self._rfile

    @rfile.setter
    def rfile(self, value: Any) -> None:
        if isinstance(value, (KnownLengthRFile, ChunkedRFile)):
            value = GuardedBody(value, self)
        self._rfile = value


class GuardedConnection(HTTPConnection):
    """A connection whose current request stops being watched when it is over."""

    RequestHandlerClass = GuardedRequest

    def communicate(self) -> bool:
        try:
            return super().communicate()
        finally:
            self.server.guard.release(self)


class GuardedServer(CPWSGIServer):
    """CherryPy's WSGI server with the guard, and a JSON 503 when the accept queue is full."""

    def __init__(self, adapter: Any, guard: ConnectionGuard):
        super().__init__(adapter)
        self.guard = guard
        # Set on the instance: CPWSGIServer.__init__ rebinds the handler class of whatever
        # ConnectionClass the class has, which would undo GuardedConnection's.
        self.ConnectionClass = GuardedConnection
        self._refused = 0
        self._refusals_logged_at = 0.0
        # Only a bounded queue can be full; then a put timeout blocks the accept loop.
        bounded = (adapter.accepted_queue_size or 0) > 0
        self._queue_timeout = adapter.accepted_queue_timeout if bounded else 0

    def prepare(self) -> None:
        super().prepare()
        if self._queue_timeout:
            log.warning("server.accepted_queue_timeout = %r: a full accept queue stalls the "
                        "accept loop that long before answering 503; 0 answers at once",
                        self._queue_timeout)
        self.guard.start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.guard.stop()

    def process_conn(self, conn: HTTPConnection) -> None:
        """Queue ``conn`` for a worker; past the queue's bound, answer 503 at once."""
        try:
            self.requests.put(conn)
        except queue.Full:
            self._refuse(conn)

    def _refuse(self, conn: HTTPConnection) -> None:
        # The accept loop's own thread owns this socket: non-blocking, best effort, no waiting.
        sock = conn.socket
        if type(sock) is socket.socket:
            with suppress(OSError):
                sock.setblocking(False)
                sock.send(OVERLOADED)
                _drain(sock)  # so the close sends FIN rather than RST over the unread request
        conn.close()
        self.guard.reject("overloaded", 503)
        self._log_refusal()

    def _log_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("accept queue full (%d waiting for a worker): answered 503 to %d "
                        "connection(s) since the last such line", self.requests.qsize,
                        self._refused,
                        extra={"event": "overloaded", "refused": self._refused})
            self._refused = 0
            self._refusals_logged_at = now


def _drain(sock: socket.socket) -> None:
    """Read (and drop) what the client has already sent, without waiting for more."""
    total = 0
    while total < MAX_DRAIN_BYTES:
        try:
            data = sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            return
        total += len(data)
