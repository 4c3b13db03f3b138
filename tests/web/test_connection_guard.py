"""Slow clients hold no thread while their heads trickle, and are cut (``header_timeout_s``,
``client_timeout_s``, a body stalling for ``server.socket_timeout``); a full accept queue
answers 503 at once.

Real servers on loopback, spoken to over raw sockets (one server per configuration), plus
in-process checks of the watchdog on socket pairs and of the head-completeness check.
"""
from __future__ import annotations

import io
import json
import socket
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import cherrypy
import pytest
import requests
from cheroot.server import KnownLengthRFile
from prometheus_client.parser import text_string_to_metric_families

from service.config import load_settings
from service.errors import ConfigError
from service.web.connection_guard import (ConnectionGuard, GuardedBody, head_decided,
                                          head_phase)
from support import (ESTABLISHED, FIXTURES, ServerProcess, closed_by_server, read_by_server,
                     tcp_ends, wait_for)

PNG7 = (FIXTURES / "digit7_28.png").read_bytes()
PREDICT = "/v1/models/digits-cnn/predict"
TIMEOUT_S = 2.0      # client_timeout_s of the slowloris server
THREADS = 3
SOCKET_TIMEOUT_S = 8  # cheroot's per-recv (and idle keep-alive) timeout there: well past TIMEOUT_S
QUEUE_TIMEOUT_S = 3.0
# No bound here depends on the machine's speed. A cut never comes before its timeout, measured
# from before the client connected, so lower bounds need no tolerance. Cuts are waited for
# NEVER_CUT_S past it, a ceiling only a server that never cuts reaches: the clients keep
# trickling meanwhile, so cheroot's per-recv timeout never fires. Waits are on what the test
# can see, such as the server having read a client's bytes off its socket (a worker holds it).
NEVER_CUT_S = 10.0
# The trickle server: few threads, so that POOL + 4 trickling heads would hold them all if a
# worker read heads; cheroot's per-recv (and keep-alive) timeout below HEADER_TIMEOUT_S, so
# that a cut coming no sooner than HEADER_TIMEOUT_S is the guard's, never cheroot's expiry.
POOL = 4
HEADER_TIMEOUT_S = 4.0
STALL_S = 3
CUT_CEILING_S = 5.0  # a head is cut within HEADER_TIMEOUT_S + this (the watchdog looks each 0.5 s)
BODY_HEAD = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
             "Content-Length: 1000\r\n\r\n").encode()  # a complete head; its body never comes


# -- servers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(tmp_path_factory) -> ServerProcess:
    config = (f'[service]\nmodels = ["digits-cnn"]\nclient_timeout_s = {TIMEOUT_S}\n'
              f"[global]\nserver.thread_pool = {THREADS}\n"
              f"server.socket_timeout = {SOCKET_TIMEOUT_S}\n")
    server = ServerProcess(tmp_path_factory.mktemp("slow"), config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trickle_server(tmp_path_factory) -> ServerProcess:
    config = (f'[service]\nmodels = ["digits-cnn"]\nheader_timeout_s = {HEADER_TIMEOUT_S}\n'
              f"[global]\nserver.thread_pool = {POOL}\nserver.socket_timeout = {STALL_S}\n")
    server = ServerProcess(tmp_path_factory.mktemp("trickle"), config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory) -> ServerProcess:
    config = (f'[service]\nmodels = ["digits-cnn"]\nclient_timeout_s = {QUEUE_TIMEOUT_S}\n'
              "[global]\nserver.thread_pool = 2\nserver.accepted_queue_size = 2\n")
    server = ServerProcess(tmp_path_factory.mktemp("queue"), config).start()
    yield server
    server.stop()


# -- raw clients -----------------------------------------------------------------------------
@dataclass
class SlowClient:
    """A raw connection that sends its request a byte at a time, and notices being cut."""

    sock: socket.socket
    started: float  # monotonic, taken before connecting: no cut can be measured from earlier
    port: int       # its own (local) port
    received: bytes = b""
    closed_after: float | None = None

    @classmethod
    def open(cls, port: int, head: bytes = b"") -> "SlowClient":
        started = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.settimeout(None)  # blocking, so MSG_DONTWAIT reads never wait
        if head:
            sock.sendall(head)
        return cls(sock, started, sock.getsockname()[1])

    def cut(self) -> bool:
        """Cut by now (reads what has arrived)."""
        self.read_available()
        return self.closed_after is not None

    def poke(self, byte: bytes = b"a") -> None:
        try:
            self.sock.send(byte)
        except OSError:
            pass  # cut: the read below sees the close
        self.read_available()

    def read_available(self) -> None:
        while self.closed_after is None:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.closed_after = time.monotonic() - self.started
                self.sock.close()
            self.received += data


def trickle(clients: list[SlowClient], limit_s: float, interval_s: float = 0.5) -> None:
    """Send each open client one more byte every ``interval_s`` until all are cut, or for
    ``limit_s`` after the first connected (then close those left)."""
    deadline = min(c.started for c in clients) + limit_s
    while time.monotonic() < deadline and any(c.closed_after is None for c in clients):
        for client in clients:
            if client.closed_after is None:
                client.poke()
        time.sleep(interval_s)
    for client in clients:
        if client.closed_after is None:
            client.sock.close()


def being_read(server: ServerProcess, clients: list[SlowClient]) -> int:
    """How many of ``clients`` the server has read all they sent so far from: a worker holds
    each (a body being read), or took its head and parked it in the selector (a head still
    arriving). One waiting in the queue for a worker keeps its bytes unread.
    """
    ends = tcp_ends()
    return sum(read_by_server(server.port, c.port, ends) for c in clients)


def all_open(server: ServerProcess, clients: list[SlowClient]) -> bool:
    """The server's end of every one of ``clients`` is still open (a cut shuts it down);
    read off /proc, so as not to touch sockets another thread is trickling on."""
    ends = tcp_ends()
    return all(getattr(ends.get((server.port, c.port)), "state", None) == ESTABLISHED
               for c in clients)


def wait_closed(sock: socket.socket, timeout_s: float) -> bool:
    """True once the peer closes ``sock``, False if it is still open after ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def in_background(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def read_one_response(sock: socket.socket, timeout_s: float = 10) -> tuple[int, dict, bytes]:
    """One Content-Length response off a keep-alive connection."""
    sock.settimeout(timeout_s)
    raw = b""
    while b"\r\n\r\n" not in raw:
        data = sock.recv(65536)
        assert data, f"closed mid-response: {raw!r}"
        raw += data
    status, headers, body = parse_response(raw)
    while len(body) < int(headers["content-length"]):
        data = sock.recv(65536)
        assert data, "closed mid-body"
        body += data
    return status, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def error_code(raw: bytes) -> tuple[int, dict, str]:
    status, headers, body = parse_response(raw)
    return status, headers, json.loads(body)["error"]["code"]


def scrape(url: str) -> str:
    # Connection: close, so the server closes it after answering: a keep-alive connection the
    # client closes later is queued for a worker to see its end, taking a queue slot meanwhile.
    return requests.get(url + "/metrics", headers={"Connection": "close"}, timeout=5).text


def rejected(url: str, code: str) -> float:
    text = scrape(url)
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "digits_http_rejected_requests_total" and s.labels["code"] == code)


def slow_cuts(url: str, phase: str) -> float:
    text = scrape(url)
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "digits_http_slow_clients_cut_total" and s.labels["phase"] == phase)


# -- slow clients ----------------------------------------------------------------------------
def test_trickled_headers_are_cut_while_others_are_served(slow_server):
    slow = SlowClient.open(slow_server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    wait_for(lambda: being_read(slow_server, [slow]) == 1)  # its head is taken: it is watched
    assert requests.get(slow_server.url + "/healthz", timeout=5).status_code == 200
    # Served meanwhile: the slow client is not cut yet (a cut would have reached it before
    # this answer). The guard keeps it uncut for TIMEOUT_S, the window this one /healthz has.
    assert not slow.cut()
    trickle([slow], TIMEOUT_S + NEVER_CUT_S)
    assert slow.closed_after is not None, "never cut"
    assert slow.closed_after >= TIMEOUT_S
    status, headers, code = error_code(slow.received)
    assert (status, code) == (408, "request_timeout")
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    wait_for(lambda: "still sending its headers" in slow_server.log())  # logged after the cut


def test_more_body_tricklers_than_threads_hold_them_only_until_cut(slow_server):
    """A trickled body does hold a worker (the app is reading it): more of them than threads
    hold the pool until client_timeout_s cuts them, and then the threads serve again."""
    clients = [SlowClient.open(slow_server.port, BODY_HEAD) for _ in range(THREADS + 2)]
    origin = clients[0].started
    wait_for(lambda: being_read(slow_server, clients) == THREADS)  # every thread is held
    thread = in_background(trickle, clients, 2 * TIMEOUT_S + NEVER_CUT_S)
    normal = requests.get(slow_server.url + "/healthz", timeout=NEVER_CUT_S)  # waits for a cut
    answered = time.monotonic() - origin
    thread.join()
    assert normal.status_code == 200
    assert answered >= TIMEOUT_S  # the pool really was held until the first cuts
    cut = sorted(c.started + c.closed_after - origin for c in clients if c.closed_after is not None)
    assert len(cut) == THREADS + 2, "some slow clients were never cut"
    assert all(parse_response(c.received)[0] == 408 for c in clients)
    # The last two only got a worker once the first were cut: their threads were reused.
    assert all(t >= TIMEOUT_S for t in cut[:THREADS])
    assert all(t >= 2 * TIMEOUT_S for t in cut[THREADS:])
    # Every thread is free again: as many new clients are all taken up, none cut meanwhile.
    probes = [SlowClient.open(slow_server.port, BODY_HEAD) for _ in range(THREADS)]
    wait_for(lambda: being_read(slow_server, probes) == THREADS)
    assert not any(p.cut() for p in probes)
    for probe in probes:
        probe.sock.close()
    assert requests.get(slow_server.url + "/healthz", timeout=NEVER_CUT_S).status_code == 200


@pytest.mark.parametrize("framing", ["Content-Length: 1000\r\n\r\n",
                                     "Transfer-Encoding: chunked\r\n\r\n3e8\r\n"])
def test_trickled_body_is_cut_with_a_json_408(slow_server, framing):
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n{framing}"
    slow = SlowClient.open(slow_server.port, head.encode())
    trickle([slow], TIMEOUT_S + NEVER_CUT_S)
    assert slow.closed_after is not None, "never cut"
    assert slow.closed_after >= TIMEOUT_S
    status, headers, code = error_code(slow.received)
    assert (status, code) == (408, "request_timeout")
    assert headers["connection"] == "close"
    wait_for(lambda: "still sending its body" in slow_server.log())


def test_slow_but_complete_request_is_served(slow_server):
    request = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
               f"Content-Length: {len(PNG7)}\r\nConnection: close\r\n\r\n").encode() + PNG7
    pieces = [request[i * len(request) // 6:(i + 1) * len(request) // 6] for i in range(6)]
    sock = socket.create_connection(("127.0.0.1", slow_server.port), timeout=5)
    port = sock.getsockname()[1]
    with sock:
        # Read piece by piece, however fast the machine; the pauses (a quarter of TIMEOUT_S
        # in all) leave the rest of it for the request to be answered.
        for piece in pieces[:-1]:
            sock.sendall(piece)
            wait_for(lambda: read_by_server(slow_server.port, port))
            time.sleep(TIMEOUT_S / 20)
        sock.sendall(pieces[-1])
        status, _, body = parse_response(read_until_closed(sock, 10))
    assert status == 200, body
    assert json.loads(body)["predictions"][0]["class"] == 7


def test_idle_keep_alive_is_left_to_cheroot(slow_server):
    sock = socket.create_connection(("127.0.0.1", slow_server.port), timeout=5)
    with sock:
        sock.sendall(get("/healthz"))
        assert read_one_response(sock)[0] == 200
        # Idle past client_timeout_s (and a sweep) between requests: not the guard's business.
        # Cheroot's own idle timeout (SOCKET_TIMEOUT_S) still leaves 5 s to spare.
        time.sleep(TIMEOUT_S + 1)
        idle_from = time.monotonic()  # before the server's last use of the connection
        sock.sendall(get("/healthz"))
        assert read_one_response(sock)[0] == 200  # the same connection, still open
        closed = wait_closed(sock, SOCKET_TIMEOUT_S + NEVER_CUT_S)
        idle_for = time.monotonic() - idle_from
    assert closed, "cheroot's idle timeout never closed it"
    assert idle_for >= SOCKET_TIMEOUT_S  # cheroot's timeout closed it, not the guard's


def test_cuts_are_counted_in_metrics(slow_server):
    before = rejected(slow_server.url, "slow_client")
    silent = SlowClient.open(slow_server.port)  # connects, never sends: holds a worker
    wait_for(silent.cut, TIMEOUT_S + NEVER_CUT_S, interval=0.1)
    assert silent.closed_after >= TIMEOUT_S
    wait_for(lambda: rejected(slow_server.url, "slow_client") >= before + 1)  # counted after it
    wait_for(lambda: "still sending its request line" in slow_server.log())


# -- heads gathered off-thread (the trickle server) ---------------------------------------------
def test_trickling_heads_hold_no_thread(trickle_server):
    """POOL + 4 sockets trickling their headers a byte a second: normal requests are answered
    meanwhile, and every trickler is cut at header_timeout_s with a 408, counted."""
    server = trickle_server
    cuts_before = slow_cuts(server.url, "headers")
    rejected_before = rejected(server.url, "slow_client")
    clients = [SlowClient.open(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
               for _ in range(POOL + 4)]
    # All taken off their sockets: were heads read by workers, only POOL of them could be.
    wait_for(lambda: being_read(server, clients) == len(clients))
    for client in clients:
        client.poke()  # one more byte each: every head goes back to the selector again
    wait_for(lambda: being_read(server, clients) == len(clients))
    thread = in_background(trickle, clients, HEADER_TIMEOUT_S + NEVER_CUT_S, 1.0)
    started = time.monotonic()
    health = requests.get(server.url + "/healthz", timeout=HEADER_TIMEOUT_S)
    health_s = time.monotonic() - started
    started = time.monotonic()
    predict = requests.post(server.url + PREDICT, data=PNG7, timeout=HEADER_TIMEOUT_S,
                            headers={"Content-Type": "image/png"})
    predict_s = time.monotonic() - started
    open_meanwhile = all_open(server, clients)
    thread.join()
    assert health.status_code == 200, health.text
    assert predict.status_code == 200, predict.text
    assert predict.json()["predictions"][0]["class"] == 7
    assert health_s < 1.0 and predict_s < 1.0, (health_s, predict_s)
    assert open_meanwhile  # answered while all of them trickled (none cut before the answers)
    assert all(c.closed_after is not None for c in clients), "some tricklers were never cut"
    for client in clients:
        assert HEADER_TIMEOUT_S <= client.closed_after <= HEADER_TIMEOUT_S + CUT_CEILING_S
        status, headers, body = parse_response(client.received)
        assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")
        assert headers["connection"] == "close"
        assert f"headers did not arrive in full within {HEADER_TIMEOUT_S:g} s" in body.decode()
    wait_for(lambda: closed_by_server(server.port, [c.port for c in clients]))
    wait_for(lambda: slow_cuts(server.url, "headers") >= cuts_before + len(clients))
    assert slow_cuts(server.url, "headers") == cuts_before + len(clients)
    assert rejected(server.url, "slow_client") == rejected_before + len(clients)
    assert f"still sending its headers (header_timeout_s = {HEADER_TIMEOUT_S:g})" in server.log()


def test_silent_connection_is_cut_at_header_timeout(trickle_server):
    """A connection that never sends waits in the selector, not in a thread, and is cut with a
    408 at header_timeout_s: cheroot's idle expiry (STALL_S, sooner) does not close it first."""
    server = trickle_server
    before = slow_cuts(server.url, "request line")
    silent = SlowClient.open(server.port)
    wait_for(silent.cut, HEADER_TIMEOUT_S + NEVER_CUT_S, interval=0.1)
    assert silent.closed_after >= HEADER_TIMEOUT_S
    status, _, code = error_code(silent.received)
    assert (status, code) == (408, "request_timeout")
    wait_for(lambda: slow_cuts(server.url, "request line") >= before + 1)
    wait_for(lambda: "still sending its request line" in server.log())


def test_keep_alive_clock_starts_at_the_next_requests_first_byte(trickle_server):
    """Idle time between keep-alive requests is not the next head's: its header_timeout_s
    runs from its first byte, and its returns to the selector do not reset it."""
    server = trickle_server
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(get("/healthz"))
    assert read_one_response(sock)[0] == 200
    sock.settimeout(None)  # blocking, as SlowClient's (its MSG_DONTWAIT reads never wait)
    time.sleep(STALL_S / 3)  # idle, well within cheroot's keep-alive timeout
    client = SlowClient(sock, time.monotonic(), sock.getsockname()[1])  # before its first byte
    client.poke(b"G")
    trickle([client], HEADER_TIMEOUT_S + NEVER_CUT_S, 1.0)
    assert client.closed_after is not None, "never cut"
    assert HEADER_TIMEOUT_S <= client.closed_after <= HEADER_TIMEOUT_S + CUT_CEILING_S
    assert error_code(client.received)[0::2] == (408, "request_timeout")


def test_stalled_body_is_cut_at_socket_timeout(trickle_server):
    """No byte of the body for server.socket_timeout: a JSON 408, counted, not a 500."""
    server = trickle_server
    cuts_before = slow_cuts(server.url, "body")
    rejected_before = rejected(server.url, "request_timeout")
    slow = SlowClient.open(server.port, BODY_HEAD + b"abc")
    wait_for(slow.cut, STALL_S + NEVER_CUT_S, interval=0.1)
    assert slow.closed_after >= STALL_S
    status, headers, body = parse_response(slow.received)
    assert (status, json.loads(body)["error"]["code"]) == (408, "request_timeout")
    assert headers["connection"] == "close"
    assert f"No byte of the request body arrived for {STALL_S:g} s" in body.decode()
    wait_for(lambda: slow_cuts(server.url, "body") >= cuts_before + 1)
    wait_for(lambda: rejected(server.url, "request_timeout") >= rejected_before + 1)
    wait_for(lambda: "its body stalled" in server.log())
    assert "internal_error" not in server.log()


# -- the accept queue ------------------------------------------------------------------------
def test_full_accept_queue_answers_503_at_once(small_queue_server):
    port = small_queue_server.port
    before = rejected(small_queue_server.url, "overloaded")
    holders = [SlowClient.open(port, BODY_HEAD) for _ in range(2)]  # both threads (bodies)
    wait_for(lambda: being_read(small_queue_server, holders) == 2)
    # The queue's two: connected before any probe, so accepted (in order) before any.
    waiting = [SlowClient.open(port, get("/healthz")) for _ in range(2)]
    answers = []
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
            probe.sendall(get("/healthz"))
            answers.append(read_until_closed(probe, 5))
    # Answered while both threads were still held (a cut's 408 shows at once) and the queue
    # full: refused without waiting for a worker.
    assert not any(holder.cut() for holder in holders)
    for client in waiting:
        client.read_available()
        assert client.received == b"" and client.closed_after is None, (  # queued, not refused
            client.received[:200])
    for raw in answers:
        status, headers, code = error_code(raw)
        assert (status, code) == (503, "overloaded")
        assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
    # Once the holders are cut, the queued requests are served.
    for client in waiting:
        wait_for(lambda: client.read_available() or b"\r\n\r\n" in client.received,
                 QUEUE_TIMEOUT_S + NEVER_CUT_S, interval=0.1)
        assert parse_response(client.received)[0] == 200
        client.sock.close()
    for client in holders:
        client.read_available()
        client.sock.close()
    # Closed connections are queued for a worker to see their end: scrape once they are gone.
    wait_for(lambda: closed_by_server(port, [c.port for c in holders + waiting]))
    wait_for(lambda: rejected(small_queue_server.url, "overloaded") >= before + 3)


# -- the watchdog, in process ----------------------------------------------------------------
def fake_request(started_request: bool, ready: bool) -> SimpleNamespace:
    return SimpleNamespace(started_request=started_request, ready=ready, guard_cut=False,
                           sent_headers=False, close_connection=False,
                           server=SimpleNamespace(guard=SimpleNamespace(timeout_s=TIMEOUT_S)))


class FakeConnection:
    """What the guard reads off a cheroot connection (hashable, like the real one)."""

    remote_addr, remote_port = "127.0.0.1", 1

    def __init__(self, sock: socket.socket):
        self.socket = sock


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.settimeout(5)  # timeout mode, as cheroot's accepted sockets are
    yield FakeConnection(ours), theirs
    ours.close()
    theirs.close()


def test_watchdog_cuts_late_headers_with_a_408(pair):
    conn, peer = pair
    rejections = []
    guard = ConnectionGuard(TIMEOUT_S, lambda code, status: rejections.append((code, status)))
    request = fake_request(started_request=True, ready=False)
    guard.watch(conn, request)
    assert guard.sweep(time.monotonic()) == 0  # not yet late
    assert guard.sweep(time.monotonic() + TIMEOUT_S) == 1
    status, _, code = error_code(read_until_closed(peer, 2))
    assert (status, code) == (408, "request_timeout")
    assert request.guard_cut and rejections == [("slow_client", 408)]
    assert guard.watching() == 0


def test_watchdog_spares_released_requests_and_complete_bodies(pair):
    conn, peer = pair
    guard = ConnectionGuard(TIMEOUT_S, lambda code, status: pytest.fail("counted a cut"))
    guard.watch(conn, fake_request(started_request=False, ready=False))
    guard.release(conn)
    assert guard.sweep(time.monotonic() + TIMEOUT_S) == 0
    request = fake_request(started_request=True, ready=True)
    request.rfile = GuardedBody(KnownLengthRFile(io.BytesIO(b"abc"), 3), request)
    request.rfile.read()  # the whole body arrived: what follows is the app's time
    guard.watch(conn, request)
    assert guard.sweep(time.monotonic() + TIMEOUT_S) == 0
    assert guard.watching() == 0 and not request.guard_cut
    with pytest.raises(BlockingIOError):
        peer.recv(1, socket.MSG_DONTWAIT)  # left open, nothing written


def test_body_read_after_a_cut_answers_408_to_the_app():
    request = fake_request(started_request=True, ready=True)
    body = GuardedBody(KnownLengthRFile(io.BytesIO(b"abc"), 10), request)
    assert body.read(2) == b"ab" and not body.complete
    request.guard_cut = True
    with pytest.raises(cherrypy.HTTPError) as raised:
        body.read()
    assert raised.value.status == 408 and request.close_connection
    request.sent_headers = True  # cheroot skipping the rest of the body: no error then
    assert body.read() == b"" and body.remaining == 7


def parked(sock: socket.socket, head: bytes, since: float) -> FakeConnection:
    """A connection whose head is being gathered off-thread, as GuardedConnection keeps it."""
    conn = FakeConnection(sock)
    conn.guard_since, conn.guard_head, conn.guard_cut = since, bytearray(head), False
    return conn


def test_watchdog_cuts_a_parked_head_with_a_408(pair):
    ours, peer = pair
    rejections, cuts = [], []
    guard = ConnectionGuard(TIMEOUT_S, lambda code, status: rejections.append((code, status)),
                            header_timeout_s=1.0, on_cut=cuts.append)
    since = time.monotonic()
    conn = parked(ours.socket, b"GET / HTTP/1.1\r\nHo", since)
    guard.pend(conn)
    assert guard.sweep(since + 0.5) == 0  # not yet late
    assert guard.sweep(since + 1.0) == 1
    status, _, body = parse_response(read_until_closed(peer, 2))
    assert status == 408 and "headers did not arrive in full within 1 s" in body.decode()
    assert conn.guard_cut and cuts == ["headers"] and rejections == [("slow_client", 408)]
    assert not guard.hand_over(conn)  # the worker the shutdown wakes closes it
    assert guard.gathering() == 0 and guard.sweep(since + 10) == 0


def test_a_head_handed_over_in_time_has_the_whole_requests_deadline(pair):
    ours, peer = pair
    guard = ConnectionGuard(TIMEOUT_S, lambda code, status: pytest.fail("counted a cut"),
                            header_timeout_s=1.0)
    since = time.monotonic()
    conn = parked(ours.socket, b"GET / HTTP/1.1\r\n\r\n", since)
    guard.pend(conn)
    assert guard.hand_over(conn) and guard.gathering() == 0
    conn.guard_head_buffered = True
    request = fake_request(started_request=True, ready=False)  # cheroot parsing its buffer
    guard.watch(conn, request)
    assert request.guard_started == since  # the clock started at the first look, not now
    assert guard.sweep(since + 1.5) == 0  # past header_timeout_s, but the head had arrived
    guard.release(conn)
    guard.forget(conn)
    with pytest.raises(BlockingIOError):
        peer.recv(1, socket.MSG_DONTWAIT)  # left open, nothing written


def test_a_guard_without_timeouts_gathers_nothing():
    guard = ConnectionGuard(0.0, lambda code, status: None, header_timeout_s=0.0)
    assert not guard.enabled and not guard.gathers
    guard = ConnectionGuard(0.0, lambda code, status: None, header_timeout_s=5.0)
    assert guard.gathers and guard.head_timeout_s == 5.0
    guard = ConnectionGuard(3.0, lambda code, status: None, header_timeout_s=5.0)
    assert (guard.head_timeout_s, guard.head_timeout_key) == (3.0, "client_timeout_s")


@pytest.mark.parametrize("head, decided", [
    (b"", False),
    (b"GET /healthz HTTP/1.1", False),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", False),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r", False),
    (b"\r\nGET /healthz HTTP/1.1\r\n", False),  # cheroot skips one leading CRLF
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", True),
    (b"\r\n\r\n", True),  # an empty request line: cheroot answers 400
    (b"GET /healthz HTTP/1.1\nHost", True),  # a bare LF: cheroot answers 400
    (b"GET / HTTP/1.1\r\nHost: x\n", True),
])
def test_head_decided(head, decided):
    assert head_decided(head) is decided
    assert head_decided(bytearray(head)) is decided


def test_head_decided_finds_an_end_split_across_reads():
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r"
    assert not head_decided(first)
    # The next search starts 3 bytes before what the last one saw; a CR before that start
    # still counts, so a CRLF split there is not taken for a bare LF.
    assert head_decided(first + b"\n", len(first) - 3)
    line = b"GET /healthz HTTP/1.1\r"
    assert not head_decided(line + b"\n", len(line))


@pytest.mark.parametrize("head, phase", [
    (b"", "request line"), (b"GET /heal", "request line"), (b"\r\nGET /", "request line"),
    (b"GET / HTTP/1.1\r\n", "headers"), (b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a", "headers"),
])
def test_head_phase(head, phase):
    assert head_phase(head) == phase


@pytest.mark.parametrize("value, message", [("-1.0", "must not be negative"),
                                            ('"10"', "expected float")])
def test_header_timeout_s_is_validated(tmp_path, value, message):
    path = tmp_path / "service.conf"
    path.write_text(f"[service]\nheader_timeout_s = {value}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert "[service] header_timeout_s" in str(raised.value)
    assert message in str(raised.value)
    path.write_text("[service]\nheader_timeout_s = 3\n")
    assert load_settings(path).service.header_timeout_s == 3.0
    assert load_settings(None).service.header_timeout_s == 10.0
