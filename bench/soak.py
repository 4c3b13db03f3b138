#!/usr/bin/env python3
"""Soak the digits service with concurrent clients on loopback, then audit its input log.

    .venv/bin/python bench/soak.py                                  # 60 s, 32 clients
    .venv/bin/python bench/soak.py --duration 600                   # make soak's clean run
    .venv/bin/python bench/soak.py --duration 60 --kill-after 20    # kill -9 fault run
    .venv/bin/python bench/soak.py --url http://127.0.0.1:8080 --pid PID --inputlog-dir DIR

Unless --url is given it starts the real server (``python -m service serve``) on a free
loopback port with its own temporary config and input-log directory. N client threads then
send a mix of valid single images (raw and base64 JSON), JSON batches, bad inputs and feedback
for a fixed duration or a maximum request count, whichever ends first; a progress line goes to
stderr every few seconds.

Clean run: SIGTERM the server, then check the input log's SQLite database
(``PRAGMA integrity_check``; every 200 prediction's records present). Targets: zero 5xx for
valid requests, zero lost records, server RSS growth after warm-up < 10%.

Fault run (--kill-after S): kill -9 the server after S seconds of load, restart it on the same
input-log directory, and check: integrity ok, no temp image files left after the restarted
server's start-up clean-up, every record's image file present, a prediction after the restart
is logged, and the 200 predictions whose records were lost are at most [inputlog] queue_size.

Figures go to bench/RESULTS.md (in a section between ``<!-- soak -->`` markers, or
``<!-- soak-fault -->`` for a fault run, replacing the previous one) and to bench/soak.json.
"""
from __future__ import annotations

import argparse
import ast
import base64
import collections
import configparser
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # as a script or bench.soak
from bench import sections  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
BENCH_DIR = REPO / "bench"
DEFAULT_CONFIG = REPO / "conf" / "service.conf"
LOOPBACK = "127.0.0.1"  # the only address this tool starts a server on
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")  # ... or talks to (--url)
MODEL = "digits-cnn"
PREDICT = f"/v1/models/{MODEL}/predict"
DB_NAME = "inputlog.sqlite3"   # service/inputlog/records.py DB_NAME
TMP_GLOB = ".*.tmp"            # service/blobstore.py LocalBlobStore temp files
# Fixtures every model reads as a digit (blank.png, truncated.png, not_an_image.txt are not).
VALID_IMAGES = ("digit7_28.png", "digit7_112.jpg", "digit2_112.gif", "digit7_112.bmp",
                "digit2_112.tiff", "digit2_112.webp", "rgba_digit.png", "dark_on_light.png",
                "exif_rotated.jpg", "photo_digit.jpg")
MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".gif": "image/gif", ".bmp": "image/bmp",
         ".tiff": "image/tiff", ".webp": "image/webp"}
MIX = {"raw": 30, "json": 20, "batch": 10, "bad": 25, "feedback": 15}  # relative weights
VALID_KINDS = ("raw", "json", "batch", "feedback")  # must never see a 5xx
PREDICT_KINDS = ("raw", "json", "batch")            # their 200s must all be in the input log
RSS_GROWTH_LIMIT = 10.0  # percent, after warm-up
REQUEST_TIMEOUT_S = 30.0
MARKER = "soak"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    clients: int = 32
    duration: float = 60.0
    max_requests: int = 1_000_000
    warmup: float | None = None        # default: 10% of the duration, 5..60 s
    kill_after: float | None = None    # fault run: kill -9 after this many seconds of load
    url: str | None = None             # an already-running server
    pid: int | None = None             # ... its process, for RSS
    inputlog_dir: Path | None = None   # ... its [inputlog] dir, for the audit
    queue_size: int | None = None      # [inputlog] queue_size of the started server
    batch: tuple[int, int] = (8, 32)
    unique_fraction: float = 0.2       # valid PNGs made unique, so image files keep being written
    progress_every: float = 5.0
    seed: int = 1
    results_md: Path | None = BENCH_DIR / "RESULTS.md"
    results_json: Path | None = BENCH_DIR / "soak.json"

    @property
    def warmup_s(self) -> float:
        if self.warmup is not None:
            return self.warmup
        return min(60.0, max(5.0, self.duration * 0.1))

    @property
    def load_s(self) -> float:
        return self.kill_after if self.kill_after is not None else self.duration


def default_queue_size() -> int:
    """[inputlog] queue_size of conf/service.conf (the value a server runs with by default)."""
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    parser.read(DEFAULT_CONFIG)
    return int(ast.literal_eval(parser.get("inputlog", "queue_size", fallback="10000")))


# -- the server ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


class SoakServer:
    """``python -m service serve`` on a loopback port, with its own config and input log."""

    def __init__(self, workdir: Path, queue_size: int, threads: int):
        self.workdir = workdir
        self.inputlog_dir = workdir / "inputlog"
        self.queue_size = queue_size
        self.config_path = workdir / "service.conf"
        self.config_path.write_text(
            f'[global]\nserver.socket_host = "{LOOPBACK}"\nserver.thread_pool = {threads}\n'
            f'[service]\nmodels = ["{MODEL}"]\n'
            f'[inputlog]\ndir = "{self.inputlog_dir}"\nqueue_size = {queue_size}\n')
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.starts = 0

    def start(self, timeout: float = 180.0) -> None:
        """Start (or restart) on a new free port; return once /readyz answers 200."""
        port = free_port()
        self.url = f"http://{LOOPBACK}:{port}"
        self.starts += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.workdir / f"server-{self.starts}.log", "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--config", str(self.config_path),
                 "--port", str(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_ready(self.url, timeout, self.proc)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill9(self) -> None:
        """The fault: SIGKILL, no chance to flush anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 60.0) -> int | None:
        """Graceful stop (SIGTERM): finish requests, write what the input log has queued."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"server did not stop within {timeout:.0f} s of SIGTERM; killing it")
            self.proc.kill()
            return self.proc.wait()


def wait_ready(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} while starting")
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout:.0f} s")


def rss_mib(pid: int | None) -> float | None:
    """VmRSS of ``pid`` from /proc, in MiB (None if unknown or gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


# -- requests ------------------------------------------------------------------------------------
def png_with_nonce(png: bytes, nonce: bytes) -> bytes:
    """The same PNG with a tEXt chunk before IEND: new bytes (a new logged image), same pixels."""
    body = b"tEXt" + b"soak\x00" + nonce
    chunk = (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


@dataclass(frozen=True)
class Corpus:
    """Request bodies, read once."""

    images: dict[str, bytes]
    png: bytes
    truncated: bytes
    not_image: bytes

    @classmethod
    def load(cls) -> "Corpus":
        return cls({name: (FIXTURES / name).read_bytes() for name in VALID_IMAGES},
                   (FIXTURES / "digit7_28.png").read_bytes(),
                   (FIXTURES / "truncated.png").read_bytes(),
                   (FIXTURES / "not_an_image.txt").read_bytes())


@dataclass(frozen=True)
class Call:
    kind: str
    method: str
    path: str
    kwargs: dict[str, Any]
    instances: int = 0  # images sent: the records a 200 must leave in the input log


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int        # 0: no HTTP answer (connection refused or reset)
    seconds: float
    at: float          # seconds since the load started
    request_id: str | None = None
    instances: int = 0


class Mixer:
    """Picks the next call for one client thread (its own random stream)."""

    def __init__(self, corpus: Corpus, rng: random.Random, options: Options,
                 answered: collections.deque):
        self.corpus, self.rng, self.options, self.answered = corpus, rng, options, answered
        self.kinds, self.weights = list(MIX), list(MIX.values())

    def image(self) -> tuple[str, bytes]:
        if self.rng.random() < self.options.unique_fraction:
            nonce = self.rng.getrandbits(64).to_bytes(8, "big").hex().encode()
            return "image/png", png_with_nonce(self.corpus.png, nonce)
        name = self.rng.choice(VALID_IMAGES)
        return MEDIA[Path(name).suffix], self.corpus.images[name]

    def next(self) -> Call:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "feedback":
            try:
                request_id, label = self.answered[self.rng.randrange(len(self.answered))]
            except (ValueError, IndexError):  # no 200 yet
                kind = "raw"
            else:
                return Call("feedback", "POST", "/v1/feedback",
                            {"json": {"request_id": request_id, "label": label}})
        return getattr(self, kind)()

    def raw(self) -> Call:
        media, data = self.image()
        if self.rng.random() < 0.2:
            media = "application/octet-stream"  # sniffed by the server
        return Call("raw", "POST", PREDICT, {"data": data, "headers": {"Content-Type": media}}, 1)

    def json(self) -> Call:
        return Call("json", "POST", PREDICT, {"json": {"image": b64(self.image()[1])}}, 1)

    def batch(self) -> Call:
        n = self.rng.randint(*self.options.batch)
        body = {"instances": [{"b64": b64(self.image()[1])} for _ in range(n)], "top_k": 3}
        return Call("batch", "POST", PREDICT, {"json": body}, n)

    def bad(self) -> Call:
        which = self.rng.randrange(4)
        if which == 0:
            kwargs = {"data": self.corpus.not_image,
                      "headers": {"Content-Type": "application/octet-stream"}}
        elif which == 1:
            kwargs = {"data": self.corpus.truncated, "headers": {"Content-Type": "image/png"}}
        elif which == 2:
            kwargs = {"json": {"instances": [{"b64": "!!not base64!!"}]}}
        else:
            kwargs = {"data": b'{"instances": [', "headers": {"Content-Type": "application/json"}}
        return Call("bad", "POST", PREDICT, kwargs)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Budget:
    """At most ``limit`` requests in all, handed out one at a time across threads."""

    def __init__(self, limit: int):
        self.limit, self.used, self.lock = limit, 0, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True


def client_loop(index: int, url: str, corpus: Corpus, options: Options,
                budget: Budget, stop: threading.Event, outcomes: list[Outcome],
                answered: collections.deque, started: float) -> None:
    """One client thread: keep-alive session, calls until told to stop or out of budget."""
    mixer = Mixer(corpus, random.Random(options.seed * 1000 + index), options, answered)
    session = requests.Session()
    while not stop.is_set() and budget.take():
        call = mixer.next()
        t0 = time.monotonic()
        response = send(session, url, call, t0, started, outcomes)
        if response is None:
            session = requests.Session()  # the old connection is dead
            stop.wait(0.05)  # a dead server: do not spin
            continue
        response, t0 = follow_retries(session, url, call, response, t0, started, stop, outcomes)
        if response is not None:
            outcomes.append(settle(call, response, time.monotonic() - t0, t0 - started, answered))
    session.close()


def follow_retries(session: requests.Session, url: str, call: Call,
                   response: requests.Response, t0: float, started: float,
                   stop: threading.Event, outcomes: list[Outcome]):
    """Follow a feedback's 503 + Retry-After (feedback_pending: its record is not written
    yet) as a real client would; each such answer is kept as kind "retried". Returns the
    final answer and when it was asked, or None if the run ended meanwhile (the client gave
    up: nothing failed) or the connection broke (recorded here)."""
    while call.kind == "feedback" and retry_later(response):
        outcomes.append(Outcome("retried", response.status_code, time.monotonic() - t0,
                                t0 - started))
        if stop.wait(float(response.headers["Retry-After"])):
            return None, t0
        t0 = time.monotonic()
        response = send(session, url, call, t0, started, outcomes)
        if response is None:
            return None, t0
    return response, t0


def send(session: requests.Session, url: str, call: Call, t0: float, started: float,
         outcomes: list[Outcome]) -> requests.Response | None:
    """One request; a broken connection is recorded as status 0 and gives None."""
    try:
        return session.request(call.method, url + call.path, timeout=REQUEST_TIMEOUT_S,
                               **call.kwargs)
    except requests.RequestException:
        outcomes.append(Outcome(call.kind, 0, time.monotonic() - t0, t0 - started))
        return None


def retry_later(response: requests.Response) -> bool:
    return response.status_code == 503 and "Retry-After" in response.headers


def settle(call: Call, response: requests.Response, seconds: float, at: float,
           answered: collections.deque) -> Outcome:
    """The outcome of one answer; a 200 prediction becomes a feedback candidate."""
    request_id = None
    if response.status_code == 200 and call.kind in PREDICT_KINDS:
        payload = response.json()
        request_id = payload["request_id"]
        answered.append((request_id, payload["predictions"][0]["label"]))
    return Outcome(call.kind, response.status_code, seconds, at, request_id, call.instances)


# -- the load and its progress -------------------------------------------------------------------
@dataclass
class LoadResult:
    outcomes: list[Outcome]
    seconds: float
    rss_start: float | None
    rss_warm: float | None
    rss_end: float | None
    loadavg_start: float
    killed_at: float | None = None


def run_load(options: Options, url: str, pid: int | None,
             kill: Callable[[], None] | None = None) -> LoadResult:
    """N client threads until the duration (or --kill-after) passes or the budget runs out."""
    outcomes: list[Outcome] = []  # list.append is atomic: the threads share it without a lock
    stop = threading.Event()
    rss_start, loadavg_start = rss_mib(pid), round(os.getloadavg()[0], 2)
    started = time.monotonic()
    threads = start_clients(options, url, outcomes, stop, started)
    rss_warm, rss_end, killed_at = None, None, None
    next_progress = options.progress_every
    while any(t.is_alive() for t in threads):
        elapsed = time.monotonic() - started
        if rss_warm is None and elapsed >= options.warmup_s:
            rss_warm = rss_mib(pid)
        if elapsed >= next_progress:
            log(progress_line(outcomes, elapsed, rss_mib(pid)))
            next_progress += options.progress_every
        if elapsed >= options.load_s:
            if kill is not None and killed_at is None:
                rss_end = rss_mib(pid)  # the last sample the server can give
                kill()
                killed_at = elapsed
                log(f"[{elapsed:6.1f}s] kill -9 sent to the server")
            stop.set()
        time.sleep(0.1)
    seconds = time.monotonic() - started
    if killed_at is None:
        rss_end = rss_mib(pid)
    log(progress_line(outcomes, seconds, rss_end) + "  (done)")
    return LoadResult(outcomes, seconds, rss_start, rss_warm, rss_end, loadavg_start, killed_at)


def start_clients(options: Options, url: str, outcomes: list[Outcome], stop: threading.Event,
                  started: float) -> list[threading.Thread]:
    """The client threads, sharing one request budget and one pool of 200s for feedback."""
    corpus, budget = Corpus.load(), Budget(options.max_requests)
    answered: collections.deque = collections.deque(maxlen=1024)
    threads = [threading.Thread(target=client_loop, name=f"soak-client-{i}", daemon=True,
                                args=(i, url, corpus, options, budget, stop, outcomes,
                                      answered, started))
               for i in range(options.clients)]
    for thread in threads:
        thread.start()
    return threads


def progress_line(outcomes: list[Outcome], elapsed: float, rss: float | None) -> str:
    done = list(outcomes)
    statuses = Counter(o.status for o in done)
    valid = latencies(done)
    rss_text = f"{rss:.0f} MiB" if rss is not None else "-"
    return (f"[{elapsed:6.1f}s] {len(done):,} requests ({len(done) / max(elapsed, 1e-9):,.0f}/s)"
            f"  statuses {dict(sorted(statuses.items()))}  valid p50 "
            f"{fmt_ms(percentile(valid, 50))} p99 {fmt_ms(percentile(valid, 99))}"
            f"  server RSS {rss_text}")


def latencies(outcomes: Iterable[Outcome], kinds: tuple[str, ...] = PREDICT_KINDS) -> list[float]:
    """Seconds of the valid predictions (of ``kinds``) that were answered 200, sorted."""
    return sorted(o.seconds for o in outcomes if o.kind in kinds and o.status == 200)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return None
    rank = max(0, min(len(values) - 1, int(round(q / 100 * len(values) + 0.5)) - 1))
    return values[rank]


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


# -- the input-log audit -------------------------------------------------------------------------
@dataclass
class Audit:
    integrity: str = "not checked"
    predictions_200: int = 0
    records_expected: int = 0
    lost_requests: int = 0
    lost_records: int = 0
    db_records: int = 0
    temp_files_after_kill: int | None = None
    temp_files_after_restart: int | None = None
    missing_image_files: int | None = None
    records_without_image_row: int | None = None
    restart_logged: bool | None = None
    lost_answered_s_before_kill: float | None = None  # how far back the oldest lost 200 was


def open_db(inputlog_dir: Path) -> sqlite3.Connection:
    path = inputlog_dir / DB_NAME
    if not path.exists():
        raise RuntimeError(f"no input log database at {path}")
    return sqlite3.connect(path, timeout=10)


def integrity(conn: sqlite3.Connection) -> str:
    """``PRAGMA integrity_check``'s answer: 'ok', or the problems it lists."""
    return "; ".join(row[0] for row in conn.execute("PRAGMA integrity_check").fetchall())


def records_by_request(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT request_id, COUNT(*) FROM predictions GROUP BY request_id"))


def lost_outcomes(outcomes: Iterable[Outcome], logged: dict[str, int]) -> list[Outcome]:
    """The 200 predictions with fewer records in the input log than images sent."""
    return [o for o in answered_predictions(outcomes)
            if logged.get(o.request_id or "", 0) < o.instances]


def answered_predictions(outcomes: Iterable[Outcome]) -> list[Outcome]:
    return [o for o in outcomes
            if o.kind in PREDICT_KINDS and o.status == 200 and o.request_id is not None]


def count_lost(outcomes: Iterable[Outcome], logged: dict[str, int]) -> tuple[int, int, int, int]:
    """(200 predictions, their records, requests with records missing, records missing)."""
    answered = answered_predictions(outcomes)
    lost = lost_outcomes(answered, logged)
    # one model: one record per image
    missing = sum(o.instances - min(o.instances, logged.get(o.request_id or "", 0)) for o in lost)
    return len(answered), sum(o.instances for o in answered), len(lost), missing


def temp_files(inputlog_dir: Path) -> list[Path]:
    """Temp files an interrupted image write leaves (the start-up clean-up removes them)."""
    return sorted(inputlog_dir.rglob(TMP_GLOB)) if inputlog_dir.is_dir() else []


def image_files_missing(conn: sqlite3.Connection, inputlog_dir: Path) -> tuple[int, int]:
    """(stored images referenced by a record whose file is missing, records with no image row)."""
    keys = [row[0] for row in conn.execute(
        "SELECT DISTINCT i.key FROM predictions p JOIN images i ON i.sha256 = p.image_sha256 "
        "WHERE i.stored = 1")]
    missing = sum(not (inputlog_dir / key).is_file() for key in keys)
    orphans = conn.execute("SELECT COUNT(*) FROM predictions p LEFT JOIN images i "
                           "ON i.sha256 = p.image_sha256 WHERE i.sha256 IS NULL").fetchone()[0]
    return missing, orphans


def audit_db(audit: Audit, inputlog_dir: Path, outcomes: list[Outcome]) -> Audit:
    """Fill ``audit`` from the database (the server has stopped, or is draining)."""
    conn = open_db(inputlog_dir)
    try:
        audit.integrity = integrity(conn)
        logged = records_by_request(conn)
        audit.db_records = sum(logged.values())
        (audit.predictions_200, audit.records_expected, audit.lost_requests,
         audit.lost_records) = count_lost(outcomes, logged)
        audit.missing_image_files, audit.records_without_image_row = image_files_missing(
            conn, inputlog_dir)
    finally:
        conn.close()
    return audit


def probe_after_restart(url: str) -> bool:
    """A prediction after the restart is answered and its record lands (feedback finds it)."""
    png = (FIXTURES / "digit7_28.png").read_bytes()
    predicted = requests.post(url + PREDICT, data=png, headers={"Content-Type": "image/png"},
                              timeout=REQUEST_TIMEOUT_S)
    if predicted.status_code != 200:
        return False
    body = {"request_id": predicted.json()["request_id"], "label": "7"}
    # feedback waits for the writer (service/inputlog/writer.py FLUSH_WAIT_S), so a 200
    # means it was written
    return requests.post(url + "/v1/feedback", json=body,
                         timeout=REQUEST_TIMEOUT_S).status_code == 200


def wait_for_records(inputlog_dir: Path, outcomes: list[Outcome], timeout: float = 15.0) -> None:
    """With a server we do not stop (--url): give its writer time to drain its queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = open_db(inputlog_dir)
        try:
            if count_lost(outcomes, records_by_request(conn))[3] == 0:
                return
        finally:
            conn.close()
        time.sleep(0.5)


# -- the report ----------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    measured: Any
    required: str
    met: bool


@dataclass
class Report:
    mode: str                      # "soak" or "fault"
    date_utc: str
    machine: dict[str, Any]
    parameters: dict[str, Any]
    seconds: float
    requests: int
    requests_per_s: float
    statuses: dict[str, dict[str, int]]
    valid_5xx: int
    connection_errors: int
    latency_ms: dict[str, float | None]
    latency_ms_by_kind: dict[str, dict[str, float | None]]
    loadavg_1m: dict[str, float]  # other work on the machine depresses every number here
    rss_mib: dict[str, float | None]
    rss_growth_percent: float | None
    server_exit_code: int | None
    audit: dict[str, Any]
    targets: list[Target] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return all(t.met for t in self.targets)


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle
                    if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as handle:
        mem_kib = next((int(line.split()[1]) for line in handle if line.startswith("MemTotal:")), 0)
    return {"cores": os.cpu_count(), "cpu_model": cpu, "ram_gib": round(mem_kib / 1024 ** 2, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def statuses_by_kind(outcomes: Iterable[Outcome]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = collections.defaultdict(Counter)
    for o in outcomes:
        table[o.kind]["no answer" if o.status == 0 else str(o.status)] += 1
    return {kind: dict(sorted(counts.items())) for kind, counts in sorted(table.items())}


def growth(warm: float | None, end: float | None) -> float | None:
    if warm is None or end is None or warm <= 0:
        return None
    return round((end - warm) / warm * 100, 2)


def build_report(options: Options, load: LoadResult, audit: Audit, exit_code: int | None,
                 queue_size: int | None) -> Report:
    outcomes = load.outcomes
    valid = latencies(outcomes)
    mode = "fault" if options.kill_after is not None else "soak"
    report = Report(
        mode=mode, date_utc=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        machine=machine_info(), parameters=parameters(options, queue_size),
        seconds=round(load.seconds, 1), requests=len(outcomes),
        requests_per_s=round(len(outcomes) / max(load.seconds, 1e-9), 1),
        statuses=statuses_by_kind(outcomes),
        valid_5xx=sum(o.kind in VALID_KINDS and o.status >= 500 for o in outcomes),
        connection_errors=sum(o.status == 0 for o in outcomes),
        latency_ms={"p50": ms(percentile(valid, 50)), "p99": ms(percentile(valid, 99)),
                    "max": ms(valid[-1] if valid else None)},
        latency_ms_by_kind={kind: {"p50": ms(percentile(latencies(outcomes, (kind,)), 50)),
                                   "p99": ms(percentile(latencies(outcomes, (kind,)), 99))}
                            for kind in PREDICT_KINDS},
        loadavg_1m={"start": load.loadavg_start, "end": round(os.getloadavg()[0], 2)},
        rss_mib={"start": load.rss_start, "after_warmup": load.rss_warm, "end": load.rss_end},
        rss_growth_percent=growth(load.rss_warm, load.rss_end), server_exit_code=exit_code,
        audit=asdict(audit))
    report.targets = judge(report, audit, queue_size)
    return report


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def parameters(options: Options, queue_size: int | None) -> dict[str, Any]:
    return {"clients": options.clients, "duration_s": options.duration,
            "max_requests": options.max_requests, "warmup_s": options.warmup_s,
            "kill_after_s": options.kill_after, "mix": MIX, "batch": list(options.batch),
            "unique_fraction": options.unique_fraction, "queue_size": queue_size,
            "server": options.url or "started by soak.py", "model": MODEL}


def judge(report: Report, audit: Audit, queue_size: int | None) -> list[Target]:
    """The targets of this mode, each measured in this run."""
    targets = [Target("zero 5xx for valid requests", report.valid_5xx, "= 0",
                      report.valid_5xx == 0),
               Target("input log integrity_check", audit.integrity, "= ok",
                      audit.integrity == "ok")]
    if report.mode == "soak":
        targets.append(Target("zero lost input-log records", audit.lost_records, "= 0",
                              audit.lost_records == 0 and audit.predictions_200 > 0))
        g = report.rss_growth_percent
        targets.append(Target("server RSS growth after warm-up", "-" if g is None else f"{g}%",
                              f"< {RSS_GROWTH_LIMIT:g}%", g is not None and g < RSS_GROWTH_LIMIT))
        return targets
    bound = queue_size if queue_size is not None else 0
    return targets + [
        Target("temp image files after the restart's clean-up", audit.temp_files_after_restart,
               "= 0", audit.temp_files_after_restart == 0),
        Target("records whose image file is missing",
               (audit.missing_image_files or 0) + (audit.records_without_image_row or 0), "= 0",
               audit.missing_image_files == 0 and audit.records_without_image_row == 0),
        Target("200 predictions whose records were lost", audit.lost_requests,
               f"<= {bound} (queue_size)", audit.lost_requests <= bound),
        Target("restarted server answers and logs a prediction", audit.restart_logged, "= True",
               bool(audit.restart_logged)),
    ]


def render_markdown(report: Report) -> str:
    """This run's section of bench/RESULTS.md (between its markers)."""
    title = "Soak: kill -9 fault run" if report.mode == "fault" else "Soak"
    how = "fault run, `--kill-after`" if report.mode == "fault" else "clean run"
    lines = [f"## {title}", "", f"Written by `bench/soak.py` ({how}); every number and verdict "
             "below comes from the same run on the machine described here.", ""]
    lines += run_lines(report) + ["", "| Measurement | Value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in measurement_rows(report)]
    lines += ["", "| Target | Measured | Required | Verdict |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {show(t.measured)} | {t.required} | "
              f"{'met' if t.met else '**NOT met**'} |" for t in report.targets]
    met = sum(t.met for t in report.targets)
    return "\n".join(lines + ["", f"{met} of {len(report.targets)} targets met."])


def run_lines(report: Report) -> list[str]:
    p, m = report.parameters, report.machine
    kill = f", kill -9 after {p['kill_after_s']:g} s" if p["kill_after_s"] is not None else ""
    return [
        f"- Date (UTC): {report.date_utc}",
        f"- Machine: {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        f"- Load average (1 min) at start / end: {report.loadavg_1m['start']} / "
        f"{report.loadavg_1m['end']} (other work on the machine depresses these numbers)",
        f"- Parameters: {p['clients']} client threads, {p['duration_s']:g} s or "
        f"{p['max_requests']:,} requests, warm-up {p['warmup_s']:g} s{kill}; batches of "
        f"{p['batch'][0]}-{p['batch'][1]} images; {p['unique_fraction']:.0%} of valid images sent "
        f"as never-seen PNGs; model {p['model']}; input-log queue_size {p['queue_size']}",
        "- Mix (weights): " + ", ".join(f"{k} {v}" for k, v in p["mix"].items())]


def measurement_rows(report: Report) -> list[tuple[str, str]]:
    a, lat, rss = report.audit, report.latency_ms, report.rss_mib
    rows = [("requests", f"{report.requests:,} in {report.seconds:g} s "
                         f"({report.requests_per_s:,.1f}/s)"),
            ("statuses by kind", "; ".join(
                f"{kind}: " + ", ".join(f"{s} x{n}" for s, n in counts.items())
                for kind, counts in report.statuses.items())),
            ("valid predictions: p50 / p99 / max", f"{show(lat['p50'])} / {show(lat['p99'])} / "
                                                  f"{show(lat['max'])} ms")]
    rows += [(f"&nbsp;&nbsp;{kind}: p50 / p99", f"{show(v['p50'])} / {show(v['p99'])} ms")
             for kind, v in report.latency_ms_by_kind.items()]
    rows += [("server RSS: start / after warm-up / end",
              f"{show(rss['start'])} / {show(rss['after_warmup'])} / {show(rss['end'])} MiB"),
             ("RSS growth after warm-up", show(report.rss_growth_percent) + "%"
              if report.rss_growth_percent is not None else "-"),
             ("5xx for valid requests", str(report.valid_5xx)),
             ("requests with no answer", str(report.connection_errors)),
             ("200 predictions / their records",
              f"{a['predictions_200']:,} / {a['records_expected']:,}"),
             ("lost: requests / records", f"{a['lost_requests']} / {a['lost_records']}"),
             ("integrity_check", a["integrity"])]
    if report.mode == "fault":
        rows += [("oldest lost 200, answered before the kill",
                  f"{show(a['lost_answered_s_before_kill'])} s"),
                 ("temp files after the kill / after the restart",
                  f"{show(a['temp_files_after_kill'])} / {show(a['temp_files_after_restart'])}"),
                 ("record images missing / records without an image row",
                  f"{show(a['missing_image_files'])} / {show(a['records_without_image_row'])}")]
    return rows


def show(value: Any) -> str:
    return "-" if value is None else str(value)


def write_outputs(report: Report, options: Options) -> None:
    name = MARKER if report.mode == "soak" else f"{MARKER}-fault"
    if options.results_md is not None:
        path = options.results_md
        sections.write_section(path, name, render_markdown(report))
        log(f"wrote the {name} section of {path}")
    if options.results_json is not None:
        path = options.results_json
        data = json.loads(path.read_text()) if path.exists() else {}
        data[report.mode] = asdict(report)
        path.write_text(json.dumps(data, indent=2) + "\n")
        log(f"wrote {path} [{report.mode}]")


def print_targets(report: Report) -> None:
    for t in report.targets:
        log(f"target: {t.name}: {t.measured} (required {t.required}) -> "
            f"{'met' if t.met else 'NOT met'}")


# -- the runs ------------------------------------------------------------------------------------
def run(options: Options) -> Report:
    """One soak (or fault) run as the options say; writes the outputs it names."""
    if options.url is not None:
        if options.kill_after is not None:
            raise SystemExit("--kill-after needs a server started by soak.py (no --url)")
        report = run_external(options)
    else:
        with tempfile.TemporaryDirectory(prefix="digits-soak-") as workdir:
            queue_size = options.queue_size or default_queue_size()
            server = SoakServer(Path(workdir), queue_size, threads=max(32, options.clients + 8))
            log(f"starting the server ({workdir}) ...")
            server.start()
            try:
                report = (run_fault(options, server) if options.kill_after is not None
                          else run_clean(options, server))
            finally:
                server.kill9()  # only if still running: the runs stop it themselves
    print_targets(report)
    write_outputs(report, options)
    return report


def run_clean(options: Options, server: SoakServer) -> Report:
    log(f"server {server.url} pid {server.pid}; {options.clients} clients for "
        f"{options.duration:g} s (at most {options.max_requests:,} requests)")
    load = run_load(options, server.url, server.pid)
    log("stopping the server (SIGTERM) ...")
    exit_code = server.stop()
    audit = audit_db(Audit(), server.inputlog_dir, load.outcomes)
    return build_report(options, load, audit, exit_code, server.queue_size)


def run_fault(options: Options, server: SoakServer) -> Report:
    log(f"server {server.url} pid {server.pid}; {options.clients} clients, kill -9 after "
        f"{options.kill_after:g} s")
    load = run_load(options, server.url, server.pid, kill=server.kill9)
    audit = Audit(temp_files_after_kill=len(temp_files(server.inputlog_dir)))
    log(f"{audit.temp_files_after_kill} temp file(s) left by the kill; restarting on the same "
        "input-log directory ...")
    server.start()
    audit.temp_files_after_restart = len(temp_files(server.inputlog_dir))
    audit.restart_logged = probe_after_restart(server.url)
    log("stopping the restarted server (SIGTERM) ...")
    exit_code = server.stop()
    audit_db(audit, server.inputlog_dir, load.outcomes)
    audit.lost_answered_s_before_kill = lost_window(load, server.inputlog_dir)
    return build_report(options, load, audit, exit_code, server.queue_size)


def lost_window(load: LoadResult, inputlog_dir: Path) -> float | None:
    """Seconds between the oldest lost 200's answer and the kill: the writer's backlog."""
    conn = open_db(inputlog_dir)
    try:
        lost = lost_outcomes(load.outcomes, records_by_request(conn))
    finally:
        conn.close()
    if not lost or load.killed_at is None:
        return None
    return round(load.killed_at - min(o.at + o.seconds for o in lost), 2)


def run_external(options: Options) -> Report:
    log(f"server {options.url} (not started here); {options.clients} clients for "
        f"{options.duration:g} s")
    wait_ready(options.url, 10)
    load = run_load(options, options.url, options.pid)
    audit = Audit()
    if options.inputlog_dir is not None:
        wait_for_records(options.inputlog_dir, load.outcomes)
        audit_db(audit, options.inputlog_dir, load.outcomes)
    return build_report(options, load, audit, None, options.queue_size)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="client threads (default 32)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--max-requests", type=int, default=1_000_000,
                        help="stop after this many requests even if time is left")
    parser.add_argument("--warmup", type=float,
                        help="seconds before the warm RSS sample (default 10%% of the "
                             "duration, 5..60)")
    parser.add_argument("--kill-after", type=float, metavar="SECONDS",
                        help="fault run: kill -9 the server after this many seconds of load, "
                             "restart it on the same input log and audit it")
    parser.add_argument("--url", help="soak an already-running server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: its pid, for RSS")
    parser.add_argument("--inputlog-dir", type=Path, help="with --url: its [inputlog] dir")
    parser.add_argument("--queue-size", type=int,
                        help="[inputlog] queue_size (default: conf/service.conf's)")
    parser.add_argument("--batch", type=int, nargs=2, default=(8, 32), metavar=("MIN", "MAX"))
    parser.add_argument("--unique-fraction", type=float, default=0.2,
                        help="share of valid images sent as a never-seen PNG (0.2)")
    parser.add_argument("--progress-every", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--results-md", type=Path, default=BENCH_DIR / "RESULTS.md")
    parser.add_argument("--results-json", type=Path, default=BENCH_DIR / "soak.json")
    parser.add_argument("--no-write", action="store_true", help="write neither file")
    args = parser.parse_args(argv)
    if args.kill_after is not None and not 0 < args.kill_after < args.duration:
        parser.error("--kill-after must be between 0 and --duration")
    if args.url and urlsplit(args.url).hostname not in LOOPBACK_NAMES:
        parser.error("--url must be a loopback address (127.0.0.1, localhost, ::1)")
    return Options(
        clients=args.clients, duration=args.duration, max_requests=args.max_requests,
        warmup=args.warmup, kill_after=args.kill_after, url=args.url, pid=args.pid,
        inputlog_dir=args.inputlog_dir, queue_size=args.queue_size, batch=tuple(args.batch),
        unique_fraction=args.unique_fraction, progress_every=args.progress_every, seed=args.seed,
        results_md=None if args.no_write else args.results_md,
        results_json=None if args.no_write else args.results_json)


def main(argv: list[str] | None = None) -> int:
    report = run(parse_args(argv))
    met = sum(t.met for t in report.targets)
    log(f"{report.mode}: {met} of {len(report.targets)} targets met")
    return 0 if report.met else 1


if __name__ == "__main__":
    sys.exit(main())
