#!/usr/bin/env python3
"""Measure the digits service on this machine; rewrite bench/RESULTS.md and bench/results.json.

    make bench                                  # the full run, about 7 minutes
    .venv/bin/python bench/run.py --quick       # a ~1 minute smoke run (written to a temp dir)

Model layer (in this process, the CNN frozen graph loaded the way the server loads it):
  (a) raw ``session.run`` images/s at batch 1, 32 and 256 (256 is "the ceiling");
  (b) the SessionPool under 32 single-image submitter threads, batching on vs off;
  (c) preprocess() cost per image for the 28x28 PNG and the 1000x1000 JPEG photo fixtures.
HTTP (the real server in a subprocess on a loopback port):
  (d) one keep-alive client posting the PNG: p50/p99 latency;
  (e) 32 concurrent clients (wrk, or a multi-process Python client): requests/s, p50/p99;
  (f) JSON bodies of 256 base64 PNGs: images/s, 1 client and 2 concurrent clients;
  (g) the HTTP floor (bench/floor.py: CherryPy answering a trivial JSON route) beside the
      service, the service with its input log off and the service with 2 worker processes,
      in interleaved rounds (bench/hotpath.py): 1-client p50 and 32-client req/s against it.
Every target is judged against numbers from the same run. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import io
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH_DIR = REPO / "bench"
FIXTURES = REPO / "tests" / "fixtures"
PNG_FIXTURE = FIXTURES / "digit7_28.png"
PHOTO_FIXTURE = FIXTURES / "photo_digit.jpg"
WRK_SCRIPT = BENCH_DIR / "predict.lua"
MODEL = "digits-cnn"
PREDICT_PATH = f"/v1/models/{MODEL}/predict"
LOOPBACK = "127.0.0.1"  # the only address this benchmark ever talks to
CLIENTS = 32
RAW_BATCHES = (1, 32, 256)
JSON_BATCH = 256
PYTHON_LOAD_START_S = 3.0  # the fallback load generator's clients start this long after launch
BUSY_CPU_PERCENT = 15.0  # CPU use by others at start above which RESULTS.md warns
INTERFERENCE_PERCENT = 5.0  # ... and during a section
DRIFT_PERCENT = 15.0  # ceiling re-checked at the end this far off (a): RESULTS.md warns
STARTED = time.monotonic()


# ---------------------------------------------------------------------------------------------
# Plan and results


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs."""

    raw_seconds: float = 5.0         # (a) per batch size
    pool_warmup: float = 1.0         # (b) per configuration, not counted
    pool_seconds: float = 15.0       # (b) per configuration
    png_runs: int = 5000             # (c)
    photo_runs: int = 300            # (c)
    latency_requests: int = 2000     # (d)
    http_warmup: int = 200           # (d) requests, and (e) a wrk/Python warm-up of 2 s
    load_seconds: float = 30.0       # (e)
    load_max_requests: int = 100_000  # (e) bound on the request count
    observe_seconds: float = 8.0     # (e) extra run that reads the server's timing_ms under load
    batch_seconds: float = 20.0      # (f) per client count
    batch_min_requests: int = 5      # (f)
    floor_rounds: int = 3            # (g) rounds over the six servers
    floor_latency_requests: int = 1000  # (g) one client, per server and round
    floor_load_seconds: float = 8.0  # (g) CLIENTS clients, per server and round


FULL = Plan()
QUICK = Plan(raw_seconds=1.0, pool_warmup=0.3, pool_seconds=2.0, png_runs=500, photo_runs=30,
             latency_requests=200, http_warmup=20, load_seconds=3.0, load_max_requests=10_000,
             observe_seconds=3.0, batch_seconds=3.0, batch_min_requests=2, floor_rounds=1,
             floor_latency_requests=100, floor_load_seconds=2.0)


@dataclass
class Target:
    key: str          # the measurement it judges, e.g. "b"
    rule: str         # what must hold, for people
    measured: float
    op: str           # "<=" or ">="
    required: float
    unit: str
    met: bool


@dataclass
class Results:
    environment: dict[str, Any] = field(default_factory=dict)
    raw_session: dict[str, dict] = field(default_factory=dict)     # (a) by batch size
    pool: dict[str, dict] = field(default_factory=dict)            # (b) by configuration
    preprocess: dict[str, dict] = field(default_factory=dict)      # (c) by fixture
    http_latency: dict[str, Any] = field(default_factory=dict)     # (d)
    http_load: dict[str, Any] = field(default_factory=dict)        # (e)
    http_batch: dict[str, dict] = field(default_factory=dict)      # (f) by client count
    hot_path: dict[str, Any] = field(default_factory=dict)         # (g) against the floor
    # Per section: % of the machine's CPU used by processes other than the benchmark, its
    # server and its load generator -- a check that the numbers were not depressed.
    interference: dict[str, float] = field(default_factory=dict)
    # The raw batch-256 ceiling measured again after the last section: how much the machine's
    # speed drifted during the run (this VM's CPU capacity varies with load on its host).
    ceiling_recheck: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p90/p99/mean/max of seconds, in milliseconds (by default)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64) * scale
    if arr.size == 0:
        return {}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(arr.mean()), 3),
            "max_ms": round(float(arr.max()), 3)}


def median_timing(timings: list[dict[str, float]]) -> dict[str, float]:
    """The median of each timing_ms key the server reported."""
    import numpy as np

    keys = timings[0].keys() if timings else ()
    return {k: round(float(np.median([t[k] for t in timings])), 3) for k in keys}


# ---------------------------------------------------------------------------------------------
# Environment


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {"cores": os.cpu_count(), "cpu_model": cpu_model,
            "ram_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version()}


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    # The benchmark's own outputs do not make the measured code "uncommitted".
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                ":!bench/RESULTS.md", ":!bench/*.json", ":!bench/NOTES.md")
    return commit + (" (+ uncommitted changes)" if dirty else "")


BUSY_MARKERS = ("service train", "fulltrain", "pytest")


def wait_for_idle(limit: float, settle: float = 20.0) -> None:
    """Wait until no busy process is seen and the CPU stays idle for ``settle`` seconds."""
    deadline = time.monotonic() + limit
    idle_since = None
    while time.monotonic() < deadline:
        load = background_load()
        if load["busy_processes"] or load["cpu_busy_percent_before"] > BUSY_CPU_PERCENT:
            idle_since = None
            log(f"waiting for an idle machine ({load['cpu_busy_percent_before']}% CPU busy, "
                f"{len(load['busy_processes'])} busy processes)")
            time.sleep(10)
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= settle:
            return
    log(f"the machine did not become idle within {limit:.0f} s; measuring anyway")


def cpu_busy_percent(seconds: float = 1.0) -> float:
    """How busy all cores were over ``seconds`` (from /proc/stat), before we start any work."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)


def background_load() -> dict[str, Any]:
    """Other work that would depress the numbers: training runs, test suites, busy cores."""
    busy = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmd for marker in BUSY_MARKERS):
            busy.append(cmd.strip()[:120])
    return {"busy_processes": busy, "cpu_busy_percent_before": cpu_busy_percent(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def system_cpu_seconds() -> float:
    """CPU-seconds all cores have been busy since boot (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children (a cluster's workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class CpuMonitor:
    """Measures the CPU that other processes used while a section ran (% of the machine)."""

    def __init__(self, results: Results, section: str, servers: list | None = None):
        self.results, self.section, self.servers = results, section, servers or []

    def own_cpu_seconds(self) -> float:
        times = os.times()  # children: wrk and the fallback clients, once they have exited
        own = times.user + times.system + times.children_user + times.children_system
        for server in self.servers:
            if server.proc is not None and server.proc.poll() is None:
                own += process_tree_cpu_seconds(server.proc.pid)
        return own

    def __enter__(self) -> "CpuMonitor":
        self.start = (time.monotonic(), system_cpu_seconds(), self.own_cpu_seconds())
        return self

    def __exit__(self, *exc_info) -> None:
        wall0, system0, own0 = self.start
        wall = time.monotonic() - wall0
        foreign = (system_cpu_seconds() - system0) - (self.own_cpu_seconds() - own0)
        percent = round(max(0.0, 100 * foreign / (wall * (os.cpu_count() or 1))), 1)
        self.percent = percent
        if percent > INTERFERENCE_PERCENT:
            log(f"WARNING: other processes used {percent}% of the CPU during ({self.section})")


@dataclass(frozen=True)
class GraphInfo:
    graphs_dir: Path
    version: int
    graph_bytes: bytes
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]   # without the batch dimension
    description: dict[str, Any]


def load_graph_info(graphs_dir: Path, version: int | None) -> GraphInfo:
    from service.models import store
    from service.models.manifest import GRAPH_FILE, read_manifest
    from service.models.loader import resolve_version

    version = resolve_version(graphs_dir, MODEL, version)
    directory = store.version_dir(graphs_dir, MODEL, version)
    manifest = read_manifest(directory)
    description = {"model": MODEL, "version": version, "path": str(directory),
                   "sha256": manifest.sha256, "accuracy": manifest.accuracy,
                   "created": manifest.created, "tf_version": manifest.tf_version,
                   "epochs": manifest.training.get("epochs"),
                   "limit": manifest.training.get("limit")}
    return GraphInfo(graphs_dir, version, (directory / GRAPH_FILE).read_bytes(),
                     manifest.input.name, manifest.output_name,
                     tuple(manifest.input.shape[1:]), description)


def mnist_inputs(count: int, input_shape: tuple[int, ...]):
    """``count`` MNIST test images as the model's float32 input, (count, *input_shape)."""
    import numpy as np

    from service.models.datasets import load_mnist

    images, _ = load_mnist("test")
    return (images[:count].astype(np.float32) / 255.0).reshape((count, *input_shape))


# ---------------------------------------------------------------------------------------------
# (a) raw session.run


def measure_raw_session(graph: GraphInfo, seconds: float,
                        batches: tuple[int, ...] = RAW_BATCHES) -> dict[str, dict]:
    """Images/s of plain ``session.run`` on this thread, one batch size after another."""
    import tensorflow as tf

    from service.config import PoolSettings
    from service.models.graph import import_graph, parse_graph_def

    defaults = PoolSettings()
    threads = defaults.threads_per_session()
    tf_graph = import_graph(parse_graph_def(graph.graph_bytes))
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                      inter_op_parallelism_threads=defaults.inter_op_threads)
    images = mnist_inputs(max(RAW_BATCHES), graph.input_shape)
    results = {}
    with tf.compat.v1.Session(graph=tf_graph, config=config) as session:
        feed_tensor = tf_graph.get_tensor_by_name(graph.input_name)
        fetch_tensor = tf_graph.get_tensor_by_name(graph.output_name)
        for batch in batches:
            feed = {feed_tensor: images[:batch]}
            warm_until = time.perf_counter() + min(1.0, seconds / 4)
            while time.perf_counter() < warm_until:  # warm-up, at least one run
                session.run(fetch_tensor, feed)
            durations = []
            start = time.perf_counter()
            end = start + seconds
            now = start
            while now < end:
                session.run(fetch_tensor, feed)
                last, now = now, time.perf_counter()
                durations.append(now - last)
            results[str(batch)] = {"batch": batch, "images_per_s": round(len(durations) * batch / (now - start), 1),
                                   "runs": len(durations), "intra_op_threads": threads,
                                   "ms_per_run_p50": percentiles(durations)["p50_ms"]}
            log(f"(a) raw session.run batch {batch:3d}: {results[str(batch)]['images_per_s']:9.1f} images/s "
                f"({results[str(batch)]['ms_per_run_p50']:.3f} ms per run)")
    return results


# ---------------------------------------------------------------------------------------------
# (b) SessionPool with many single-image submitters


BATCHING_OFF = "batching off (max_batch_size 1)"


def pool_configs() -> dict[str, dict[str, Any]]:
    """label -> PoolSettings keyword arguments; the pool's own default timeout too, if different."""
    from service.config import PoolSettings

    configs: dict[str, dict[str, Any]] = {
        "batching on, timeout 0 ms": {"max_batch_size": 256, "batch_timeout_ms": 0.0},
        "batching on, timeout 2 ms": {"max_batch_size": 256, "batch_timeout_ms": 2.0},
    }
    default = PoolSettings()
    if default.batch_timeout_ms not in (0.0, 2.0) or default.max_batch_size != 256:
        configs[f"batching on, pool defaults (timeout {default.batch_timeout_ms:g} ms, "
                f"max batch {default.max_batch_size})"] = {}
    configs[BATCHING_OFF] = {"max_batch_size": 1}
    return configs


POOL_WINDOWS = 5


def measure_pool(graph: GraphInfo, label: str, options: dict[str, Any], warmup: float,
                 seconds: float) -> dict[str, Any]:
    """``CLIENTS`` threads each loop ``pool.run(one image)``; count completions for ``seconds``."""
    from service.config import ModelConfig, PoolSettings
    from service.models.loader import load_version

    settings = PoolSettings(**options)
    model = load_version(graph.graphs_dir, ModelConfig(MODEL, version=graph.version, pool=settings))
    images = mnist_inputs(CLIENTS, graph.input_shape)
    counts = [0] * CLIENTS
    errors: list[BaseException] = []
    stop = threading.Event()

    def submitter(index: int) -> None:
        one = images[index:index + 1]
        try:
            while not stop.is_set():
                model.pool.run(one, timeout=30)
                counts[index] += 1
        except BaseException as exc:  # reported below; the measurement is then invalid
            errors.append(exc)

    workers = [threading.Thread(target=submitter, args=(i,), daemon=True) for i in range(CLIENTS)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(warmup)
        done0, batches0, t0 = sum(counts), dict(model.pool.stats.batch_sizes), time.perf_counter()
        window_rates, last_done, last_t = [], done0, t0
        for _ in range(POOL_WINDOWS):  # sub-windows show how steady the rate was
            time.sleep(seconds / POOL_WINDOWS)
            done, now = sum(counts), time.perf_counter()
            window_rates.append((done - last_done) / (now - last_t))
            last_done, last_t = done, now
        done1, batches1, t1 = last_done, dict(model.pool.stats.batch_sizes), last_t
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        model.close()
    batches = Counter(batches1) - Counter(batches0)
    runs = sum(batches.values())
    rows = sum(size * n for size, n in batches.items())
    result = {"images_per_s": round((done1 - done0) / (t1 - t0), 1), "settings": asdict(settings),
              "intra_op_threads": settings.threads_per_session(), "session_runs": runs,
              "mean_batch_size": round(rows / runs, 2) if runs else 0.0,
              "max_batch_size_seen": max(batches) if batches else 0,
              "window_images_per_s": [round(w, 1) for w in window_rates],
              "errors": [repr(e) for e in errors[:3]], "error_count": len(errors)}
    log(f"(b) pool, {label}: {result['images_per_s']:9.1f} images/s "
        f"({min(window_rates):.0f}-{max(window_rates):.0f} over {POOL_WINDOWS} windows), "
        f"mean batch {result['mean_batch_size']}" + (f", {len(errors)} ERRORS" if errors else ""))
    return result


# ---------------------------------------------------------------------------------------------
# (c) preprocessing


def measure_preprocess(path: Path, runs: int) -> dict[str, Any]:
    from service.models.preprocess import PreprocessSpec, preprocess

    data, spec = path.read_bytes(), PreprocessSpec()
    for _ in range(min(20, runs)):
        preprocess(data, spec)
    durations = []
    for _ in range(runs):
        t0 = time.perf_counter()
        preprocess(data, spec)
        durations.append(time.perf_counter() - t0)
    stats = percentiles(durations)
    result = {"fixture": str(path.relative_to(REPO)), "bytes": len(data), "runs": runs,
              "median_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"],
              "min_ms": round(min(durations) * 1000, 3)}
    log(f"(c) preprocess {path.name}: median {result['median_ms']:.3f} ms over {runs} runs")
    return result


# ---------------------------------------------------------------------------------------------
# The real server, on a loopback port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def var_paths_moved_to(directory: Path) -> dict[str, dict[str, str]]:
    """Config values that move every default path under the repo's var/ (input log, model
    cache...) into ``directory``, so a benchmark leaves nothing behind in the work tree."""
    import dataclasses

    from service import config

    var = config.REPO_ROOT / "var"
    sections = {"service": config.ServiceSettings, **getattr(config, "SECTIONS", {})}
    moved: dict[str, dict[str, str]] = {}
    for name, cls in sections.items():
        for spec in dataclasses.fields(cls):
            default = spec.default
            if isinstance(default, Path) and default.is_relative_to(var):
                moved.setdefault(name, {})[spec.name] = str(directory / default.relative_to(var))
    return moved


class BenchServer:
    """``python -m service serve`` in a subprocess, serving only the CNN from ``graphs_dir``.

    ``extra``: config values on top ({section: {key: value}}), e.g. ``{"inputlog":
    {"enabled": False}}`` or ``{"service": {"workers": 2}}``; each server gets its own
    ``workdir``.
    """

    def __init__(self, graph: GraphInfo, workdir: Path,
                 extra: dict[str, dict[str, Any]] | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "bench-service.conf"
        self.log_path = workdir / "bench-server.log"
        sections = {"global": {"server.socket_host": LOOPBACK},
                    "service": {"models": [MODEL], "graphs_dir": str(graph.graphs_dir.resolve())},
                    f"model:{MODEL}": {"version": graph.version}}
        for name, values in var_paths_moved_to(workdir / "var").items():
            sections.setdefault(name, {}).update(values)
        for name, values in (extra or {}).items():
            sections.setdefault(name, {}).update(values)
        self.config_text = "".join(
            f"[{name}]\n" + "".join(f"{key} = {value!r}\n" for key, value in values.items()) + "\n"
            for name, values in sections.items()).replace("'", '"')
        self.config_path.write_text(self.config_text)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "BenchServer":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.log_path, "wb") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--config", str(self.config_path),
                 "--port", str(self.port)], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(LOOPBACK, self.port, timeout=60)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = self.connection()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def batches_run(self) -> int:
        """session.run calls so far, from /status (to get the server's mean batch size)."""
        return json.loads(self.get("/status")[1])["models"][MODEL]["batches"]

    def cpu_seconds(self) -> float:
        """User + system CPU the server (and any worker processes of it) has used."""
        return process_tree_cpu_seconds(self.proc.pid)


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def post(conn: http.client.HTTPConnection, body: bytes, content_type: str):
    """POST to the predict route on a kept-alive connection: (status, body, keep-alive?)."""
    conn.request("POST", PREDICT_PATH, body, {"Content-Type": content_type})
    response = conn.getresponse()
    return response.status, response.read(), not response.will_close


# ---------------------------------------------------------------------------------------------
# (d) one client, latency


def measure_http_latency(server: BenchServer, body: bytes, requests: int, warmup: int) -> dict[str, Any]:
    conn = server.connection()
    for _ in range(warmup):
        post(conn, body, "image/png")
    durations, timings, non200, kept_alive = [], [], 0, True
    for _ in range(requests):
        t0 = time.perf_counter()
        status, data, alive = post(conn, body, "image/png")
        durations.append(time.perf_counter() - t0)
        kept_alive &= alive
        if status == 200:
            timings.append(json.loads(data)["timing_ms"])
        else:
            non200 += 1
    conn.close()
    result = {"requests": requests, "non200": non200, "keep_alive": kept_alive,
              **percentiles(durations), "server_timing_ms_median": median_timing(timings)}
    log(f"(d) 1 client: p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms "
        f"(server total p50 {result['server_timing_ms_median'].get('total')} ms), {non200} non-200")
    return result


# ---------------------------------------------------------------------------------------------
# (e) 32 clients, throughput


def run_wrk(server: BenchServer, body_file: Path, seconds: float, max_requests: int,
            clients: int = CLIENTS, path: str = PREDICT_PATH, content_type: str = "image/png",
            extra_header: str = "") -> dict[str, Any]:
    threads = max(1, min(clients, os.cpu_count() or 1))
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_CONTENT_TYPE": content_type,
           "BENCH_MAX_PER_THREAD": str(math.ceil(max_requests / threads)),
           "BENCH_EXTRA_HEADER": extra_header}
    command = [shutil.which("wrk"), "-t", str(threads), "-c", str(clients),
               "-d", f"{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
               "-s", str(WRK_SCRIPT), server.url + path]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 120)
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line[len("BENCH_JSON "):])
    seconds_run = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return {"requests": raw["requests"], "seconds": round(seconds_run, 3),
            "requests_per_s": round(raw["requests"] / seconds_run, 1),
            "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000, "mean_ms": round(raw["mean_us"] / 1000, 3),
            "max_ms": raw["max_us"] / 1000, "non200": raw["non200"] + errors,
            "socket_errors": errors, "wrk_threads": threads, "command": " ".join(command)}


def _load_client_process(port: int, body: bytes, content_type: str, threads: int,
                         start_at: float, stop_at: float, cap: int) -> dict[str, Any]:
    """One process of the fallback load generator: ``threads`` keep-alive clients."""
    durations: list[list[float]] = [[] for _ in range(threads)]
    non200 = [0] * threads

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < stop_at and len(durations[index]) < cap:
            t0 = time.perf_counter()
            try:
                status, _, _ = post(conn, body, content_type)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
            durations[index].append(time.perf_counter() - t0)
            non200[index] += status != 200
        conn.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return {"durations": [d for per in durations for d in per], "non200": sum(non200),
            "finished_at": time.time()}


def run_python_load(server: BenchServer, body: bytes, seconds: float, max_requests: int,
                    processes: int = 4, clients: int = CLIENTS) -> dict[str, Any]:
    """Fallback when wrk is missing: ``processes`` x (clients / processes) http.client threads."""
    threads = max(1, clients // processes)
    cap = math.ceil(max_requests / (threads * processes))
    start_at = time.time() + PYTHON_LOAD_START_S  # time for the spawned processes to start
    stop_at = start_at + seconds
    context = multiprocessing.get_context("spawn")  # never fork a process that imported TF
    with context.Pool(processes) as pool:
        parts = pool.starmap(_load_client_process,
                             [(server.port, body, "image/png", threads, start_at, stop_at, cap)] * processes)
    durations = [d for part in parts for d in part["durations"]]
    elapsed = max(part["finished_at"] for part in parts) - start_at
    return {"requests": len(durations), "seconds": round(elapsed, 3),
            "requests_per_s": round(len(durations) / elapsed, 1), **percentiles(durations),
            "non200": sum(part["non200"] for part in parts),
            "processes": processes, "threads_per_process": threads}


def observe_under_load(server: BenchServer, body: bytes, seconds: float, generate,
                       lead: float) -> dict[str, Any]:
    """The server's own timing_ms under load: the generator runs ``CLIENTS - 1`` clients while
    one more client here posts the same image and reads the responses. ``lead``: seconds the
    generator needs before its clients run."""
    background = threading.Thread(target=generate, args=(seconds + 1.0, CLIENTS - 1))
    background.start()
    time.sleep(lead)
    conn, durations, timings = server.connection(), [], []
    deadline = time.perf_counter() + seconds - 1.0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        status, data, _ = post(conn, body, "image/png")
        durations.append(time.perf_counter() - t0)
        if status == 200:
            timings.append(json.loads(data)["timing_ms"])
    conn.close()
    background.join()
    return {"probe_requests": len(durations), "probe_p50_ms": percentiles(durations).get("p50_ms"),
            "server_timing_ms_median": median_timing(timings)}


def measure_http_load(server: BenchServer, plan: Plan, body: bytes, generator: str) -> dict[str, Any]:
    def run(seconds: float, max_requests: int, clients: int = CLIENTS) -> dict[str, Any]:
        if generator == "wrk":
            return run_wrk(server, PNG_FIXTURE, seconds, max_requests, clients)
        return run_python_load(server, body, seconds, max_requests, clients=clients)

    run(2.0, plan.load_max_requests)  # warm-up: connections, thread pool, caches
    batches0, cpu0 = server.batches_run(), server.cpu_seconds()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run(plan.load_seconds, plan.load_max_requests)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    batches, cpu = server.batches_run() - batches0, server.cpu_seconds() - cpu0
    generator_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    result.update(generator=generator, clients=CLIENTS,
                  server_mean_batch_size=round(result["requests"] / batches, 2) if batches else None,
                  server_cpu_percent=round(100 * cpu / result["seconds"], 1),
                  generator_cpu_percent=(round(100 * generator_cpu / result["seconds"], 1)
                                         if generator == "wrk" else None))
    log(f"(e) {CLIENTS} clients ({generator}): {result['requests_per_s']:.1f} req/s, "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, {result['non200']} non-200, "
        f"server CPU {result['server_cpu_percent']}%, mean batch {result['server_mean_batch_size']}")
    result["observed"] = observe_under_load(
        server, body, plan.observe_seconds,
        lambda seconds, clients: run(seconds, plan.load_max_requests, clients),
        lead=1.0 if generator == "wrk" else PYTHON_LOAD_START_S + 1.0)
    log(f"(e) observed under load: client p50 {result['observed']['probe_p50_ms']} ms, "
        f"server timing_ms {result['observed']['server_timing_ms_median']}")
    return result


# ---------------------------------------------------------------------------------------------
# (f) JSON batches of 256 base64 PNGs


def batch_payload(count: int = JSON_BATCH) -> bytes:
    """``{"instances": [{"b64": png}, ...]}`` with ``count`` different MNIST test images."""
    from PIL import Image

    from service.models.datasets import load_mnist

    images, _ = load_mnist("test")
    instances = []
    for image in images[:count]:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        instances.append({"b64": base64.b64encode(out.getvalue()).decode("ascii")})
    return json.dumps({"instances": instances}).encode()


def measure_http_batch(server: BenchServer, payload: bytes, clients: int, seconds: float,
                       min_requests: int) -> dict[str, Any]:
    """``clients`` threads each post the payload in a loop for ``seconds`` (and min_requests)."""
    durations: list[float] = []
    timings: list[dict[str, float]] = []
    non200 = [0]
    lock = threading.Lock()

    def client(deadline: float) -> None:
        conn = server.connection()
        done = 0
        while time.perf_counter() < deadline or done < min_requests:
            t0 = time.perf_counter()
            status, data, _ = post(conn, payload, "application/json")
            elapsed = time.perf_counter() - t0
            done += 1
            with lock:
                durations.append(elapsed)
                if status == 200:
                    timings.append(json.loads(data)["timing_ms"])
                else:
                    non200[0] += 1
        conn.close()

    warm = server.connection()
    post(warm, payload, "application/json")  # warm-up
    warm.close()
    start = time.perf_counter()
    workers = [threading.Thread(target=client, args=(start + seconds,)) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    result = {"clients": clients, "requests": len(durations), "images_per_request": JSON_BATCH,
              "payload_bytes": len(payload), "seconds": round(elapsed, 3),
              "images_per_s": round(len(durations) * JSON_BATCH / elapsed, 1),
              **percentiles(durations), "non200": non200[0],
              "server_timing_ms_median": median_timing(timings)}
    log(f"(f) JSON x{JSON_BATCH}, {clients} client(s): {result['images_per_s']:.1f} images/s, "
        f"p50 {result['p50_ms']:.1f} ms/request; server {result['server_timing_ms_median']}")
    return result


@dataclass
class Runner:
    """Runs each section under a CpuMonitor. A section that other processes disturbed is
    measured again (``retries`` times at most, after waiting up to ``wait_idle`` s for an idle
    machine); the least disturbed attempt is kept."""

    results: Results
    only: set[str]
    retries: int = 0
    wait_idle: float = 0.0

    def section(self, key: str, field_name: str, measure, *servers: Any) -> None:
        """Store ``measure()`` in ``results.<field_name>``."""
        if key not in self.only:
            return
        best: tuple[float, Any] | None = None
        for attempt in range(self.retries + 1):
            with CpuMonitor(self.results, key, list(servers)) as monitor:
                value = measure()
            if best is None or monitor.percent < best[0]:
                best = (monitor.percent, value)
            if monitor.percent <= INTERFERENCE_PERCENT or attempt == self.retries:
                break
            log(f"({key}) was disturbed; measuring it again (retry {attempt + 1} of {self.retries})")
            if self.wait_idle:
                wait_for_idle(self.wait_idle)
        self.results.interference[key], value = best
        setattr(self.results, field_name, value)


def ceiling_drift(r: Results) -> float | None:
    """% by which the re-checked ceiling differs from (a)'s."""
    first = r.raw_session.get("256", {}).get("images_per_s")
    again = r.ceiling_recheck.get("images_per_s")
    return 100 * (again / first - 1) if first and again else None


def measure_model_layer(run: Runner, graph: GraphInfo, plan: Plan) -> None:
    run.section("a", "raw_session", lambda: measure_raw_session(graph, plan.raw_seconds))
    run.section("b", "pool", lambda: {
        label: measure_pool(graph, label, options, plan.pool_warmup, plan.pool_seconds)
        for label, options in pool_configs().items()})
    run.section("c", "preprocess", lambda: {
        path.name: measure_preprocess(path, runs)
        for path, runs in ((PNG_FIXTURE, plan.png_runs), (PHOTO_FIXTURE, plan.photo_runs))})


def measure_servers(run: Runner, graph: GraphInfo, workdir: Path, plan: Plan,
                    generator: str) -> None:
    """(d)-(f) on the service alone, then (g): it, its variants and the floor, in rounds."""
    from bench import hotpath

    wanted = hotpath.servers(graph, workdir) if "g" in run.only else \
        {hotpath.SERVICE: BenchServer(graph, workdir / "server-0")}
    service = wanted[hotpath.SERVICE]
    run.results.environment["server_config"] = service.config_text
    log(f"starting {len(wanted)} server(s): {', '.join(wanted)} ...")
    try:
        starting = [threading.Thread(target=server.start) for server in wanted.values()]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        for name, server in wanted.items():
            if server.proc is None or server.proc.poll() is not None:
                raise RuntimeError(f"the {name} server did not start")
        measure_http(run, service, plan, generator)

        def load(server: Any, seconds: float) -> dict[str, Any]:
            if generator == "wrk":
                return run_wrk(server, PNG_FIXTURE, seconds, plan.load_max_requests)
            return run_python_load(server, PNG_FIXTURE.read_bytes(), seconds,
                                   plan.load_max_requests)

        run.section("g", "hot_path", lambda: hotpath.measure(wanted, plan, load),
                    *wanted.values())
    finally:
        for server in wanted.values():
            server.stop()


def measure_http(run: Runner, server: BenchServer, plan: Plan, generator: str) -> None:
    png = PNG_FIXTURE.read_bytes()
    payload = batch_payload()
    run.section("d", "http_latency", lambda: measure_http_latency(
        server, png, plan.latency_requests, plan.http_warmup), server)
    run.section("e", "http_load", lambda: measure_http_load(server, plan, png, generator), server)
    run.section("f", "http_batch", lambda: {
        str(clients): measure_http_batch(server, payload, clients, plan.batch_seconds,
                                         plan.batch_min_requests)
        for clients in (1, 2)}, server)


# ---------------------------------------------------------------------------------------------
# Targets


def judge(results: Results) -> list[Target]:
    targets = []

    def add(key: str, rule: str, measured: float | None, required: float | None, unit: str,
            at_most: bool = False) -> None:
        if measured is None or required is None:
            return
        met = measured <= required if at_most else measured >= required
        targets.append(Target(key, rule, round(measured, 3), "<=" if at_most else ">=",
                              round(required, 3), unit, met))

    ceiling = results.raw_session.get("256", {}).get("images_per_s")
    off = results.pool.get(BATCHING_OFF, {}).get("images_per_s")
    for label, measured in results.pool.items():
        if label == BATCHING_OFF:
            continue
        on = measured["images_per_s"]
        add("b", f"pool {label} >= 3x batching off", on, off and 3 * off, "images/s")
        add("b", f"pool {label} >= 50% of raw batch-256 ceiling", on, ceiling and 0.5 * ceiling,
            "images/s")
    png = results.preprocess.get("digit7_28.png", {}).get("median_ms")
    add("c", "preprocess 28x28 PNG median <= 0.2 ms", png, 0.2, "ms", at_most=True)
    add("d", "1 client p50 latency <= 3 ms", results.http_latency.get("p50_ms"), 3.0, "ms",
        at_most=True)
    load = results.http_load
    add("e", f"{CLIENTS} clients >= 600 requests/s", load.get("requests_per_s"), 600.0, "req/s")
    if load:
        add("e", f"{CLIENTS} clients: every response 200", load["non200"], 0, "non-200",
            at_most=True)
    one = results.http_batch.get("1", {}).get("images_per_s")
    add("f", f"JSON x{JSON_BATCH}, 1 client >= 60% of raw batch-256 ceiling", one,
        ceiling and 0.6 * ceiling, "images/s")
    from bench import hotpath

    hotpath.targets(results.hot_path, add)
    return targets


# ---------------------------------------------------------------------------------------------
# Report


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table_rows(r: Results) -> list[tuple[str, str, str, str]]:
    """(section, measurement, value, notes) for every number of the run."""
    rows = []
    for batch, m in r.raw_session.items():
        rows.append(("a", f"raw session.run, batch {batch}", f"{fmt(m['images_per_s'])} images/s",
                     f"{fmt(m['ms_per_run_p50'], 3)} ms/run p50, {m['runs']} runs, "
                     f"{m['intra_op_threads']} intra-op threads"))
    if r.ceiling_recheck:
        m = r.ceiling_recheck
        rows.append(("a", "raw session.run, batch 256, again at the end", f"{fmt(m['images_per_s'])} images/s",
                     f"{ceiling_drift(r):+.1f}% vs (a): drift of the machine's speed during the run"))
    for label, m in r.pool.items():
        errors = f", {m['error_count']} errors" if m["error_count"] else ""
        rows.append(("b", f"SessionPool, {CLIENTS} submitters, {label}",
                     f"{fmt(m['images_per_s'])} images/s",
                     f"mean batch {m['mean_batch_size']}, max {m['max_batch_size_seen']}, "
                     f"{m['session_runs']} session runs; {POOL_WINDOWS} windows "
                     f"{fmt(min(m['window_images_per_s']), 0)}-{fmt(max(m['window_images_per_s']), 0)} "
                     f"images/s{errors}"))
    rows += ratio_rows(r)
    for name, m in r.preprocess.items():
        rows.append(("c", f"preprocess {name} ({fmt(m['bytes'])} bytes)",
                     f"{fmt(m['median_ms'], 3)} ms median",
                     f"p90 {fmt(m['p90_ms'], 3)} ms, min {fmt(m['min_ms'], 3)} ms, {m['runs']} runs"))
    if r.http_latency:
        m = r.http_latency
        rows.append(("d", "HTTP PNG, 1 keep-alive client: p50", f"{fmt(m['p50_ms'], 3)} ms",
                     f"{m['requests']} requests, {m['non200']} non-200, keep-alive {m['keep_alive']}"))
        rows.append(("d", "HTTP PNG, 1 keep-alive client: p99", f"{fmt(m['p99_ms'], 3)} ms",
                     f"p90 {fmt(m['p90_ms'], 3)}, mean {fmt(m['mean_ms'], 3)}, max {fmt(m['max_ms'], 3)} ms"))
        rows.append(("d", "  server timing_ms (median)", timing_text(m["server_timing_ms_median"]), ""))
    if r.http_load:
        m = r.http_load
        gen = (f"wrk, {m['wrk_threads']} threads" if m["generator"] == "wrk"
               else f"python, {m['processes']} processes x {m['threads_per_process']} threads")
        rows.append(("e", f"HTTP PNG, {CLIENTS} clients: throughput", f"{fmt(m['requests_per_s'])} req/s",
                     f"{fmt(m['requests'])} requests in {m['seconds']} s ({gen}), "
                     f"{m['non200']} non-200/errors"))
        rows.append(("e", f"HTTP PNG, {CLIENTS} clients: p50 / p99",
                     f"{fmt(m['p50_ms'], 2)} / {fmt(m['p99_ms'], 2)} ms",
                     f"mean {fmt(m['mean_ms'], 2)} ms, max {fmt(m['max_ms'], 2)} ms"))
        rows.append(("e", "  server during load", f"{fmt(m['server_cpu_percent'])}% CPU",
                     f"mean batch size {m['server_mean_batch_size']}; load generator "
                     f"{fmt(m['generator_cpu_percent'])}% CPU"))
        if m.get("observed"):
            o = m["observed"]
            rows.append(("e", "  server timing_ms under load (median)",
                         timing_text(o["server_timing_ms_median"]),
                         f"separate run: {CLIENTS - 1} load clients + 1 client reading responses "
                         f"({o['probe_requests']} requests, p50 {fmt(o['probe_p50_ms'], 2)} ms)"))
    for clients, m in r.http_batch.items():
        rows.append(("f", f"HTTP JSON x{JSON_BATCH} b64 PNG, {clients} client(s)",
                     f"{fmt(m['images_per_s'])} images/s",
                     f"{m['requests']} requests, p50 {fmt(m['p50_ms'])} ms, p99 {fmt(m['p99_ms'])} ms "
                     f"per request, {m['non200']} non-200"))
        rows.append(("f", "  server timing_ms (median)", timing_text(m["server_timing_ms_median"]), ""))
    ceiling = r.raw_session.get("256", {}).get("images_per_s")
    for clients, m in r.http_batch.items():
        if ceiling:
            rows.append(("f", f"  ratio, {clients} client(s)",
                         f"{100 * m['images_per_s'] / ceiling:.1f}% of raw batch 256", ""))
    from bench import hotpath

    rows += hotpath.rows(r.hot_path)
    return rows


def ratio_rows(r: Results) -> list[tuple[str, str, str, str]]:
    """The within-run ratios the targets are judged on."""
    rows = []
    ceiling = r.raw_session.get("256", {}).get("images_per_s")
    raw32 = r.raw_session.get("32", {}).get("images_per_s")
    off = r.pool.get(BATCHING_OFF, {}).get("images_per_s")
    for label, m in r.pool.items():
        if label.startswith("batching on"):
            parts = []
            if off:
                parts.append(f"{m['images_per_s'] / off:.2f}x batching off")
            if ceiling:
                parts.append(f"{100 * m['images_per_s'] / ceiling:.1f}% of raw batch 256")
            if raw32:
                parts.append(f"{100 * m['images_per_s'] / raw32:.1f}% of raw batch 32")
            rows.append(("b", f"  ratios, {label}", ", ".join(parts), ""))
    return rows


def timing_text(timing: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in timing.items()) or "-"


def where_time_goes(r: Results) -> list[str]:
    """Notes derived from this run's numbers, for the targets that were not met."""
    notes = []
    missed = {t.key for t in r.targets if not t.met}
    ceiling = r.raw_session.get("256", {}).get("images_per_s")
    raw1 = r.raw_session.get("1", {}).get("images_per_s")
    if "b" in missed and r.pool:
        on = r.pool.get("batching on, timeout 0 ms", {})
        off = r.pool.get(BATCHING_OFF, {})
        notes.append(
            f"(b) With batching on, the pool merged {on.get('mean_batch_size')} images per "
            f"session.run on average; batching off runs one image per call "
            f"({fmt(off.get('images_per_s'))} images/s vs {fmt(raw1)} raw at batch 1). "
            f"With {CLIENTS} single-image submitters no batch can exceed {CLIENTS} images, so the "
            f"reachable ceiling here is raw batch {CLIENTS} "
            f"({fmt(r.raw_session.get(str(CLIENTS), {}).get('images_per_s'))} images/s), not batch 256. "
            "Between two batches every submitter thread must wake on its Future and submit again, "
            "one at a time under the GIL, while TensorFlow's intra-op threads use every core during "
            "the run; that per-image Python overhead is not overlapped with inference.")
    if "d" in missed and r.http_latency:
        m = r.http_latency
        total = m["server_timing_ms_median"].get("total", 0.0)
        notes.append(
            f"(d) Client p50 {fmt(m['p50_ms'], 3)} ms, of which the handler's own timing (decode + "
            f"preprocess + queue + inference) is {total:g} ms; the remaining "
            f"{fmt(m['p50_ms'] - total, 3)} ms is HTTP parsing, CherryPy dispatch, JSON encoding "
            "and the loopback round trip.")
    if "e" in missed and r.http_load:
        m = r.http_load
        notes.append(
            f"(e) The server used {fmt(m['server_cpu_percent'])}% CPU (of {100 * (os.cpu_count() or 1)}% "
            f"on this machine) at {fmt(m['requests_per_s'])} req/s, i.e. "
            f"{fmt(m['server_cpu_percent'] * 10 / max(m['requests_per_s'], 1), 2)} ms of CPU per request; "
            f"the load generator used {fmt(m['generator_cpu_percent'])}%. Mean model batch under this "
            f"load was {m['server_mean_batch_size']}."
            + (f" Under the same load the handler's own timing_ms total was "
               f"{m['observed']['server_timing_ms_median'].get('total')} ms of a "
               f"{m['observed']['probe_p50_ms']} ms client p50: the rest is spent in CherryPy/cheroot "
               "outside the handler (waiting for a worker thread and the GIL)."
               if m.get("observed") else ""))
    if "f" in missed and r.http_batch.get("1"):
        m = r.http_batch["1"]
        t = m["server_timing_ms_median"]
        notes.append(
            f"(f) One {JSON_BATCH}-image request takes {fmt(m['p50_ms'])} ms at the client; the "
            f"server reports {timing_text(t)} ms. Raw session.run at batch {JSON_BATCH} needs "
            f"{fmt(r.raw_session.get('256', {}).get('ms_per_run_p50'), 3)} ms. Decode + preprocess "
            f"cost {fmt((t.get('decode', 0) + t.get('preprocess', 0)) * 1000 / JSON_BATCH, 0)} us per "
            f"image, one image after another in the request thread, and "
            f"{fmt(m['p50_ms'] - t.get('total', 0))} ms per request is outside the handler "
            "(JSON parsing, base64, response encoding, HTTP).")
    if ceiling is None:
        notes.append("The raw ceiling (a) was not measured in this run, so ratio targets were skipped.")
    return notes


def write_markdown(r: Results, path: Path, notes_file: Path) -> None:
    env = r.environment
    g = env.get("graph", {})
    lines = ["# Benchmark results", "",
             "Written by `bench/run.py` (`make bench`); every number and every verdict below comes "
             "from the same run on the machine described here. Do not edit by hand.", ""]
    if env.get("quick"):
        lines += ["**QUICK SMOKE RUN: durations are too short for these numbers to mean much.**", ""]
    background = env["background"]
    if background["busy_processes"] or background["cpu_busy_percent_before"] > BUSY_CPU_PERCENT:
        lines += [f"**Warning: the machine was not idle when this run started "
                  f"({background['cpu_busy_percent_before']}% CPU busy); numbers are depressed.** "
                  + "; ".join(f"`{c}`" for c in background["busy_processes"]), ""]
    disturbed = {k: v for k, v in r.interference.items() if v > INTERFERENCE_PERCENT}
    drift = ceiling_drift(r)
    if drift is not None and abs(drift) > DRIFT_PERCENT:
        lines += [f"**Warning: the raw batch-256 ceiling measured again at the end of the run was "
                  f"{drift:+.0f}% off the one from (a): the machine's speed drifted during the run, "
                  "so ratios between sections are less reliable.**", ""]
    m = env["machine"]
    lines += [
        "## Run", "",
        f"- Date (UTC): {env['date_utc']}",
        f"- Machine: {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}",
        f"- At start: {background['cpu_busy_percent_before']}% CPU busy (1 s sample), load "
        f"average {background['loadavg_1m']:.2f}; busy processes: "
        f"{', '.join(background['busy_processes']) or 'none'}",
        f"- CPU used by other processes during each section (% of the machine): "
        + (", ".join(f"({k}) {v}%" for k, v in r.interference.items()) or "-"),
        f"- TensorFlow: {env['tf_version']}",
        f"- Git commit: {env['git_commit']}",
        f"- Graph: {g.get('model')} version {g.get('version')} "
        f"(`{g.get('path')}`, sha256 {str(g.get('sha256'))[:12]}, test accuracy "
        f"{fmt(100 * g['accuracy'] if g.get('accuracy') is not None else None, 2)}%, "
        f"created {g.get('created')})",
        f"- Load generator for (e): {r.http_load.get('generator', '-')}",
        f"- Duration of the benchmark: {env.get('bench_seconds', 0):.0f} s", "",
        "## Measurements", "",
        "| | Measurement | Value | Notes |", "|---|---|---|---|"]
    lines += [f"| {s} | {name} | {value} | {notes} |" for s, name, value, notes in table_rows(r)]
    lines += ["", "## Targets", "", "| | Target | Measured | Required | Verdict |", "|---|---|---|---|---|"]
    for t in r.targets:
        digits = 3 if t.unit in ("ms", "x floor", "x off") else (0 if t.unit in ("non-200", "errors") else 1)
        lines.append(f"| {t.key} | {t.rule} | {fmt(float(t.measured), digits)} {t.unit} | "
                     f"{t.op} {fmt(float(t.required), digits)} {t.unit} | "
                     f"{'met' if t.met else '**NOT met**'} |")
    met = sum(t.met for t in r.targets)
    lines += ["", f"{met} of {len(r.targets)} targets met.", ""]
    notes = where_time_goes(r)
    if notes:
        lines += ["## Where the time goes (from this run's numbers)", ""]
        lines += [f"- {n}" for n in notes] + [""]
    if env.get("server_config"):
        lines += ["## Server configuration", "",
                  "The HTTP sections ran `python -m service serve` with this temporary config "
                  "(everything not listed is the service's default; default paths under `var/` "
                  "are moved into the temporary directory):", "", "```ini",
                  env["server_config"].strip(), "```", ""]
    if notes_file.exists():
        lines += [notes_file.read_text().rstrip(), ""]
    path.write_text(keep_marked_sections("\n".join(lines), path))


def keep_marked_sections(text: str, path: Path) -> str:
    """``text`` followed by the sections other tools own in the old ``path`` (bench/sections.py)."""
    from bench import sections

    kept = sections.marked_sections(path.read_text()) if path.exists() else ""
    return text.rstrip() + "\n\n" + kept if kept else text


# ---------------------------------------------------------------------------------------------
# Main


SECTIONS = "abcdefg"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run; results go to a temp dir unless --out is given")
    parser.add_argument("--graphs-dir", type=Path, default=REPO / "graphs",
                        help="where digits-cnn/<N>/model.pb lives (default: graphs/)")
    parser.add_argument("--model-version", type=int, help="default: the newest under --graphs-dir")
    parser.add_argument("--only", default=SECTIONS, help="run only these sections, e.g. 'ab' or 'def'")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator for (e); auto: wrk if installed")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for the machine to be idle (no training "
                        "or test runs, < 15%% CPU busy); then run regardless, with a warning")
    parser.add_argument("--retries", type=int, default=0,
                        help="measure a section again (this many times at most) when other "
                        "processes used more than 5%% of the CPU while it ran")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite RESULTS.md from results.json (e.g. after "
                        "editing bench/NOTES.md)")
    parser.add_argument("--out", type=Path, help="directory for RESULTS.md and results.json "
                        "(default: bench/, or a temp dir with --quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (Path(tempfile.gettempdir()) / "digits-bench-quick" if args.quick else BENCH_DIR)
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.only)
    if args.report_only:
        data = json.loads((out / "results.json").read_text())
        data["targets"] = [Target(**t) for t in data["targets"]]
        write_markdown(Results(**data), out / "RESULTS.md", BENCH_DIR / "NOTES.md")
        log(f"rewrote {out / 'RESULTS.md'} from {out / 'results.json'}")
        return 0
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    if generator == "wrk" and not shutil.which("wrk"):
        log("wrk is not installed (apt-get install -y wrk); use --generator python")
        return 2

    if args.wait_idle:
        wait_for_idle(args.wait_idle)
    results = Results()
    log(f"{'quick' if args.quick else 'full'} run; sections {''.join(sorted(only))}; graphs {args.graphs_dir}")
    graph = load_graph_info(args.graphs_dir, args.model_version)
    import tensorflow as tf

    results.environment = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_info(), "tf_version": tf.__version__, "git_commit": git_commit(),
        "graph": graph.description, "background": background_load(), "quick": args.quick,
        "plan": asdict(plan)}
    background = results.environment["background"]
    if background["busy_processes"] or background["cpu_busy_percent_before"] > BUSY_CPU_PERCENT:
        log(f"WARNING: the machine is busy ({background['cpu_busy_percent_before']}% CPU; "
            f"{background['busy_processes']}); numbers will be depressed")
    log(f"graph {MODEL} v{graph.version}, TF {tf.__version__}, {os.cpu_count()} cores")

    run = Runner(results, only, args.retries, args.wait_idle)
    measure_model_layer(run, graph, plan)
    if only & set("defg"):
        with tempfile.TemporaryDirectory(prefix="digits-bench-") as workdir:
            measure_servers(run, graph, Path(workdir), plan, generator)

    if "a" in only:
        log("re-checking the raw batch-256 ceiling")
        results.ceiling_recheck = measure_raw_session(graph, plan.raw_seconds, (256,))["256"]
    results.targets = judge(results)
    results.environment["bench_seconds"] = round(time.monotonic() - STARTED, 1)
    (out / "results.json").write_text(json.dumps(asdict(results), indent=2) + "\n")
    write_markdown(results, out / "RESULTS.md", BENCH_DIR / "NOTES.md")
    for t in results.targets:
        log(f"target [{t.key}] {t.rule}: {t.measured} vs {t.required} -> {'met' if t.met else 'NOT met'}")
    log(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
