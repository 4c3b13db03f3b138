"""Below CherryPy: slow clients cannot hold worker threads, and a full accept queue answers 503.

cheroot hands each connection to a worker thread, which reads the request (request line,
headers, body) with blocking recvs; ``server.socket_timeout`` applies to each recv, so a
client trickling a byte every few seconds would hold a worker for as long as it likes, and
``server.thread_pool`` such clients would hold them all. ``GuardedServer`` (a CherryPy WSGI
server, installed as ``cherrypy.server.instance``) changes that:

- **Request heads are gathered off-thread.** A worker given a connection
  (``GuardedConnection.communicate``) first takes what has arrived, without waiting (one
  non-blocking recv into the connection's own buffer). Until the blank line ending the
  headers is there, the connection goes straight back to cheroot's selector, which wakes
  when more bytes arrive: trickling a head costs a socket and a few bytes, never a thread.
  Once the head is complete (or decidedly malformed, or past ``max_request_header_size``),
  its bytes become cheroot's read buffer and cheroot parses and answers as always. The bytes
  are taken, not peeked: cheroot's selector is level-triggered and would wake at once, again
  and again, on bytes left unread. TLS sockets keep cheroot's way (a worker reads their
  heads; the watchdog still cuts them).
- **Deadlines.** A request's clock starts at the first look a worker takes at it: the new
  connection, or on a keep-alive connection the arrival of its next request's first byte.
  Its head must be complete within ``[service] header_timeout_s`` (the sooner of it and
  ``client_timeout_s``), all of it within ``client_timeout_s``. While its head is being
  gathered the connection is the guard's alone: its ``last_used`` reads "now", so cheroot's
  keep-alive expiry, re-armed by every return to the selector, neither resets that clock nor
  closes the connection unanswered. Idle keep-alive connections (no byte of a next request)
  are not watched: cheroot's own ``socket_timeout`` still closes them.
- **One watchdog thread** looks every ``interval_s``. A late head, parked in the selector or
  read by a worker: the watchdog writes a 408 JSON error itself (non-blocking) and shuts the
  socket down (a worker, woken by that, closes it). A body still arriving after
  ``client_timeout_s``: it shuts the reading side only, and the app's next read raises a 408
  that CherryPy answers in JSON as usual. A body that stalls (no byte for
  ``server.socket_timeout``, cheroot's per-recv timeout) gets the same 408 from the app's
  read, rather than the 500 a timed-out read would be. Each cut is logged once and counted
  once in ``digits_http_slow_clients_cut_total{phase}``, and as before in
  ``digits_http_rejected_requests_total``: ``slow_client`` 408 here for a head cut,
  ``request_timeout`` 408 by the app's own accounting for a body cut.

With ``server.accepted_queue_size`` bounded, cheroot refuses a connection when the queue of
connections waiting for a worker is full; here it gets a JSON 503 with ``Retry-After``,
written straight to the socket, counted as ``overloaded``.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import socket
import threading
import time
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Callable

import cherrypy
from cheroot.makefile import StreamReader
from cheroot.server import ChunkedRFile, HTTPConnection, KnownLengthRFile
from cherrypy._cpwsgi_server import CPWSGIHTTPRequest, CPWSGIServer

from ..errors import http_code
from .responses import error_payload, to_json

if TYPE_CHECKING:
    from ..metrics import ServiceMetrics

log = logging.getLogger("service.web")

Reject = Callable[[str, int], None]  # (error code, HTTP status), once per refused request
Cut = Callable[[str], None]  # (phase), once per connection cut for slowness
REQUEST_LINE, HEADERS, BODY = "request line", "headers", "body"
GO, PARK, CLOSE = "go", "park", "close"  # a gathered head: to cheroot, to the selector, closed
# Where cheroot stops reading a head: its end (a blank line), or a bare LF it refuses (400).
HEAD_DECIDED = re.compile(rb"\r\n\r\n|(?<!\r)\n")
RECV_BYTES = 65536
MAX_HEAD_BYTES = 1 << 20  # a head gathered off-thread, when cheroot sets no header size limit
REFUSAL_LOG_INTERVAL_S = 10.0  # under overload, one summary line rather than one per connection
MAX_DRAIN_BYTES = 65536
DRAIN_POLL_S = 0.02  # how often a stopping server looks whether arriving requests are in


def raw_response(status: str, code: str, message: str, headers: tuple[str, ...] = ()) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with our JSON error body."""
    body = to_json(error_payload(code, message))
    lines = (f"HTTP/1.1 {status}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *headers, "Connection: close", "", "")
    return "\r\n".join(lines).encode("latin-1") + body


OVERLOADED = raw_response("503 Service Unavailable", "overloaded",
                          "The server is busy; retry in a second.", ("Retry-After: 1",))


def timeout_message(timeout_s: float) -> str:
    return f"The request did not arrive in full within {timeout_s:g} s."


def head_timeout_message(timeout_s: float) -> str:
    return f"The request's headers did not arrive in full within {timeout_s:g} s."


def stall_message(timeout_s: float) -> str:
    return f"No byte of the request body arrived for {timeout_s:g} s."


def count_rejections(metrics: "ServiceMetrics") -> Reject:
    """A ``Reject`` that counts in ``digits_http_rejected_requests_total``."""
    return lambda code, status: metrics.rejected.labels(code, str(status)).inc()


def count_cuts(metrics: "ServiceMetrics") -> Cut:
    """A ``Cut`` that counts in ``digits_http_slow_clients_cut_total``."""
    return lambda phase: metrics.slow_clients_cut.labels(phase).inc()


def install(timeout_s: float, metrics: "ServiceMetrics", adapter: Any = None,
            header_timeout_s: float = 0.0) -> "GuardedServer":
    """Make ``cherrypy.server`` (already configured) serve through a ``GuardedServer``.

    ``timeout_s``: ``[service] client_timeout_s``; ``header_timeout_s``: ``[service]
    header_timeout_s``.
    """
    adapter = adapter or cherrypy.server
    guard = ConnectionGuard(timeout_s, count_rejections(metrics),
                            header_timeout_s=header_timeout_s, on_cut=count_cuts(metrics))
    server = GuardedServer(adapter, guard)
    adapter.instance = server
    return server


# -- the watchdog ----------------------------------------------------------------------------
class ConnectionGuard:
    """Heads being gathered and requests being read, by connection, and the one thread that
    cuts the late ones.

    A head must be complete ``head_timeout_s`` after its request's clock started: the sooner
    of ``header_timeout_s`` and ``timeout_s`` (``client_timeout_s``), whichever is set; a
    whole request, ``timeout_s`` after. Both 0: nothing is watched, and heads are read by
    workers as cheroot does. ``on_reject`` and ``on_cut`` run on the watchdog, accept and
    worker threads.
    """

    def __init__(self, timeout_s: float, on_reject: Reject, interval_s: float = 0.5,
                 header_timeout_s: float = 0.0, on_cut: Cut | None = None):
        self.timeout_s = timeout_s
        self.header_timeout_s = header_timeout_s
        self.on_reject = on_reject
        self.on_cut = on_cut
        self.interval_s = interval_s
        limits = [(t, key) for t, key in ((header_timeout_s, "header_timeout_s"),
                                          (timeout_s, "client_timeout_s")) if t > 0]
        self.head_timeout_s, self.head_timeout_key = min(limits, key=lambda limit: limit[0],
                                                         default=(0.0, ""))
        self.enabled = bool(limits)
        # Heads are gathered off-thread only with a deadline to cut the parked ones at.
        self.gathers = self.head_timeout_s > 0
        self.timeout_response = raw_response("408 Request Timeout", "request_timeout",
                                             timeout_message(timeout_s))
        self._responses = {"client_timeout_s": self.timeout_response,
                           "header_timeout_s": raw_response(
                               "408 Request Timeout", "request_timeout",
                               head_timeout_message(header_timeout_s))}
        self._watched: dict[Any, Any] = {}  # connection -> the GuardedRequest being read
        self._pending: dict[Any, float] = {}  # connection -> when the head it gathers began
        # Held while cutting, releasing, handing a gathered head over and forgetting a
        # closed connection: a socket is closed only once the guard has let go of it, so the
        # watchdog never touches a closed (or reused) descriptor.
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # hot path: one insert, one delete per request
    def watch(self, conn: Any, request: Any) -> None:
        if self.enabled:
            since = getattr(conn, "guard_since", None)  # when gathering its head began
            request.guard_started = time.monotonic() if since is None else since
            request.guard_head_buffered = getattr(conn, "guard_head_buffered", False)
            self._watched[conn] = request

    def release(self, conn: Any) -> None:
        if self.enabled:
            with self._lock:
                self._watched.pop(conn, None)

    def watching(self) -> int:
        return len(self._watched)

    # heads gathered off-thread: one insert at the first look, one delete at the hand-over
    def pend(self, conn: Any) -> None:
        """``conn`` gathers a head from ``conn.guard_since`` on; the watchdog may cut it."""
        self._pending[conn] = conn.guard_since

    def hand_over(self, conn: Any) -> bool:
        """``conn``'s head is complete: cheroot reads it now. False if it was cut meanwhile."""
        with self._lock:
            if conn.guard_cut:
                return False
            self._pending.pop(conn, None)
            return True

    def forget(self, conn: Any) -> None:
        """``conn`` is about to be closed."""
        if conn in self._pending:
            with self._lock:
                self._pending.pop(conn, None)

    def gathering(self) -> int:
        return len(self._pending)

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
        """Cut every head and request still arriving past its deadline; how many were cut."""
        cut = 0
        if self.head_timeout_s:
            late = now - self.head_timeout_s
            for conn, since in self._pending.copy().items():
                if since <= late:
                    cut += self._cut_head(conn, now)
        for conn, request in self._watched.copy().items():
            limit, _ = self._deadline(request)
            if limit and request.guard_started <= now - limit:
                cut += self._expire(conn, request, now)
        return cut

    def _deadline(self, request: Any) -> tuple[float, str]:
        """The limit on ``request`` now, and its key: a head read by a worker has the head's."""
        if request_phase(request) == BODY or getattr(request, "guard_head_buffered", False):
            return self.timeout_s, "client_timeout_s"
        return self.head_timeout_s, self.head_timeout_key

    def _cut_head(self, conn: Any, now: float) -> bool:
        with self._lock:
            since = self._pending.get(conn)
            if since is None or now - since < self.head_timeout_s:
                return False  # handed over, or closed, since the snapshot
            del self._pending[conn]
            conn.guard_cut = True  # the worker the shutdown wakes closes it
            phase = head_phase(bytes(conn.guard_head))
            _write_nowait(conn.socket, self._responses[self.head_timeout_key])
            _shutdown(conn.socket, socket.SHUT_RDWR)
        self._report(conn, phase, now - since, self.head_timeout_key)
        return True

    def _expire(self, conn: Any, request: Any, now: float) -> bool:
        with self._lock:
            if self._watched.get(conn) is not request or request.guard_cut:
                return False  # finished (or a new request started, or stalled) meanwhile
            phase = request_phase(request)
            limit, key = self._deadline(request)  # the phase may have moved on since
            if not limit or now - request.guard_started < limit:
                return False
            del self._watched[conn]
            if phase == BODY and body_complete(request):
                return False  # arrived in time; the app is working on it
            request.guard_cut = True
            if phase == BODY:
                # the app's next read raises 408 (GuardedBody); CherryPy writes the answer
                _shutdown(conn.socket, socket.SHUT_RD)
            else:
                _write_nowait(conn.socket, self._responses[key])
                _shutdown(conn.socket, socket.SHUT_RDWR)
        self._report(conn, phase, now - request.guard_started, key)
        return True

    def _report(self, conn: Any, phase: str, seconds: float, key: str) -> None:
        client = f"{conn.remote_addr}:{conn.remote_port}"
        limit = self.header_timeout_s if key == "header_timeout_s" else self.timeout_s
        log.warning("slow client %s cut after %.1f s, still sending its %s (%s = %g)",
                    client, seconds, phase, key, limit,
                    extra={"event": "slow_client", "client": client, "phase": phase,
                           "seconds": round(seconds, 3)})
        self.count_cut(phase)
        if phase != BODY:  # a body cut reaches the app, which counts its 408 request_timeout
            self.reject("slow_client", 408)

    def stalled(self, request: Any, timeout_s: float) -> None:
        """``request``'s body stalled: no byte for ``timeout_s`` (cheroot's per-recv timeout)."""
        conn = request.conn
        client = f"{conn.remote_addr}:{conn.remote_port}"
        started = request.guard_started  # 0.0: not watched (both timeouts off)
        seconds = time.monotonic() - started if started else timeout_s
        log.warning("slow client %s cut after %.1f s, its body stalled: no byte for %g s "
                    "(server.socket_timeout)", client, seconds, timeout_s,
                    extra={"event": "slow_client", "client": client, "phase": BODY,
                           "seconds": round(seconds, 3)})
        self.count_cut(BODY)

    def count_cut(self, phase: str) -> None:
        if self.on_cut is None:
            return
        try:
            self.on_cut(phase)
        except Exception:
            log.error("counting a slow client cut failed", exc_info=True)

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


def head_decided(head: bytes | bytearray, start: int = 0) -> bool:
    """cheroot can answer this head without reading more: its blank line is there, or a bare
    LF it refuses with 400. ``start``: where the search may begin (3 bytes before the end of
    what an earlier call saw, so an end split across two reads is still found)."""
    return HEAD_DECIDED.search(head, start) is not None


def head_phase(head: bytes) -> str:
    """What an incomplete head was still sending (cheroot skips one leading CRLF)."""
    line_ended = b"\n" in (head[2:] if head.startswith(b"\r\n") else head)
    return HEADERS if line_ended else REQUEST_LINE


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
        except Exception as exc:
            error = self._timeout_error()
            if error is None and isinstance(exc, TimeoutError):
                error = self._stalled()
            if error is None:
                raise
            raise error from None
        error = self._timeout_error()
        if error is not None:
            raise error
        return data

    def _stalled(self) -> cherrypy.HTTPError | None:
        """A recv timed out: no byte of the body for ``server.socket_timeout``. cheroot's
        socket reader refuses every read after that, so the request ends here, in a 408."""
        request = self._request
        if request.sent_headers:
            return None
        timeout_s = request.server.timeout
        request.guard_cut = True
        request.guard_cut_message = stall_message(timeout_s)
        request.server.guard.stalled(request, timeout_s)
        return self._timeout_error()

    def _timeout_error(self) -> cherrypy.HTTPError | None:
        request = self._request
        if not request.guard_cut or request.sent_headers:
            return None  # not cut, or cheroot itself is skipping the rest of the body
        request.close_connection = True  # the rest of the body never comes
        message = getattr(request, "guard_cut_message", None)
        return cherrypy.HTTPError(408, message or timeout_message(request.server.guard.timeout_s))


class GuardedRequest(CPWSGIHTTPRequest):
    """A request the guard watches from the moment a worker starts reading it."""

    guard_cut = False
    guard_cut_message: str | None = None  # the 408's message, when not client_timeout_s's
    guard_started = 0.0
    guard_head_buffered = False  # its head was gathered before cheroot read it

    def __init__(self, server: "GuardedServer", conn: HTTPConnection):
        super().__init__(server, conn)
        server.guard.watch(conn, self)

    def send_headers(self) -> None:
        if self.server.served_by:
            self.outheaders.append((b"X-Served-By", self.server.served_by))
        super().send_headers()

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
    """A connection that gathers each request's head without holding a worker, and whose
    current request stops being watched when it is over."""

    RequestHandlerClass = GuardedRequest
    guard_since: float | None = None  # monotonic: when the current request's clock started
    guard_cut = False                 # the watchdog cut the head being gathered
    guard_head_buffered = False       # the current request's head is in cheroot's buffer

    def __init__(self, server: "GuardedServer", sock: Any, *args: Any, **kwargs: Any):
        super().__init__(server, sock, *args, **kwargs)
        self.guard_head = bytearray()  # what has arrived of the head being gathered
        self._scanned = 0              # how much of guard_head head_decided has seen
        self._last_used: float | None = None
        # Plain sockets only (TCP or Unix): TLS records cannot be taken raw off the socket.
        self._gathers = (server.guard.gathers and type(sock) is socket.socket
                         and isinstance(self.rfile, StreamReader))

    @property  # type: ignore[override]
    def last_used(self) -> float | None:
        """cheroot's keep-alive clock (ConnectionManager): "now" while a head is gathered,
        so that the guard alone decides when it is too late (see the module docstring)."""
        return time.time() if self.guard_since is not None else self._last_used

    @last_used.setter
    def last_used(self, value: float | None) -> None:
        self._last_used = value

    def communicate(self) -> bool:
        guard = self.server.guard
        if self._gathers:
            step = self._gather(guard)
            if step != GO:
                return step == PARK  # True: cheroot puts it back in its selector
        try:
            return super().communicate()
        finally:
            self.guard_since = None
            self.guard_head_buffered = False
            guard.release(self)

    def close(self) -> None:
        self.server.guard.forget(self)
        super().close()

    def _gather(self, guard: ConnectionGuard) -> str:
        """Take what has arrived of the request's head, without waiting: GO once cheroot can
        answer it without a blocking read, else PARK (or CLOSE after a cut)."""
        if self.guard_cut:
            return CLOSE
        if self.guard_since is None:  # the first look at this request: its clock starts
            self.guard_since = time.monotonic()
            guard.pend(self)
        rfile = self.rfile
        if rfile.has_data():  # bytes cheroot read past the previous request (pipelining)
            with rfile._read_lock:
                self.guard_head += rfile._read_buf[rfile._read_pos:]
                rfile._read_buf, rfile._read_pos = b"", 0
        if not self._take_available(self.server.max_request_header_size or MAX_HEAD_BYTES):
            return CLOSE if self.guard_cut else PARK
        if not guard.hand_over(self):
            return CLOSE  # cut meanwhile: the 408 is written, the socket shut down
        with rfile._read_lock:  # cheroot reads the head (and whatever followed) from here
            rfile._read_buf, rfile._read_pos = bytes(self.guard_head), 0
        self.guard_head = bytearray()
        self._scanned = 0
        self.guard_head_buffered = True
        return GO

    def _take_available(self, limit: int) -> bool:
        """Move what the socket holds into ``guard_head`` without waiting; True once cheroot
        can answer the head (complete, refused, over ``limit``) or the client is gone."""
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0.0)  # in timeout mode a recv would first poll for that long
        try:
            while True:
                head = self.guard_head
                if len(head) > limit or head_decided(head, max(0, self._scanned - 3)):
                    return True
                self._scanned = len(head)
                try:
                    data = sock.recv(RECV_BYTES)
                except BlockingIOError:
                    return False  # all of it taken: wait in the selector for more
                except OSError:
                    return True  # reset, or shut down: cheroot's own read meets it
                if not data:
                    return True  # the client closed: cheroot reads the end, as it would
                head += data
        finally:
            sock.settimeout(timeout)


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
        self.served_by: bytes | None = None  # X-Served-By of every answer; None: pid-<pid>
        # cheroot's default (10) answers "Connection: close" beyond 10 idle keep-alive
        # connections; CherryPy does not expose it, so [global] server.keep_alive_conn_limit.
        self.keep_alive_conn_limit = getattr(adapter, "keep_alive_conn_limit", None) or \
            self.keep_alive_conn_limit
        # A cluster worker serves on the socket its parent bound (cluster/supervisor.py).
        self.inherited_socket: socket.socket | None = None
        # Only a bounded queue can be full; then a put timeout blocks the accept loop.
        bounded = (adapter.accepted_queue_size or 0) > 0
        self._queue_timeout = adapter.accepted_queue_timeout if bounded else 0

    def bind(self, family: int, type: int, proto: int = 0) -> socket.socket:
        if self.inherited_socket is None:
            return super().bind(family, type, proto)
        sock = self.socket = self.inherited_socket
        self.bind_addr = sock.getsockname()[:2]
        return sock

    @property
    def can_add_keepalive_connection(self) -> bool:
        """cheroot's ``keep_alive_conn_limit`` counts the connections in its selector; heads
        parked there while they arrive are not idle keep-alive connections."""
        limit = self.keep_alive_conn_limit
        if not self.ready or limit is None:
            return self.ready
        return self._connections._num_connections - self.guard.gathering() < limit

    def prepare(self) -> None:
        super().prepare()
        if self.served_by is None:  # here, not at mount: a --daemon process has forked since
            self.served_by = f"pid-{os.getpid()}".encode()
        if self._queue_timeout:
            log.warning("server.accepted_queue_timeout = %r: a full accept queue stalls the "
                        "accept loop that long before answering 503; 0 answers at once",
                        self._queue_timeout)
        self.guard.start()

    def stop(self) -> None:
        try:
            self._finish_arriving_requests()
            super().stop()
        finally:
            self.guard.stop()

    def _finish_arriving_requests(self) -> None:
        """Stop accepting, then wait (at most the head deadline) for the connections whose
        request is still arriving: they wait in the selector, and cheroot's stop would close
        them unanswered. Answered, they are served like any other before the pool stops."""
        selector = getattr(getattr(self, "_connections", None), "_selector", None)
        if not self.ready or not self.guard.gathers or self.socket is None or selector is None:
            return
        try:
            selector.unregister(self.socket.fileno())  # no new connection from here on
        except (KeyError, ValueError, OSError):
            return
        waiting = self.guard.gathering()
        if not waiting:
            return
        log.info("stopping: %d connection(s) still sending their request; waiting up to "
                 "%g s", waiting, self.guard.head_timeout_s)
        deadline = time.monotonic() + self.guard.head_timeout_s
        while self.guard.gathering() and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)

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
