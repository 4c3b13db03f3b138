"""Section (g) of bench/run.py: the service against the HTTP floor, in interleaved rounds.

The floor is bench/floor.py, the benchmark's own CherryPy server answering a trivial JSON
route with the service's cheroot settings. Six servers run side by side -- the floor, the
floor with all its threads on one CPU (what the service's CPU placement alone is worth), the
bare floor (the same answer from a WSGI callable grafted on the tree: what CherryPy's request
layer costs of the floor), the service (one process, its defaults), the service with the input
log off, and the service with two worker processes -- and each round measures every one of
them in turn, so that the machine's drifting speed touches all alike; each figure is the
median over the rounds, and each ratio the median of the rounds' own ratios. Per server and
round: one keep-alive client posting the 28x28 PNG (latency), then CLIENTS clients
(throughput, p99, errors).
"""
from __future__ import annotations

import http.client
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench import run as base

FLOOR, FLOOR_ONE_CPU = "floor", "floor, on one CPU"
FLOOR_BARE = "floor without CherryPy's request layer"
FLOOR_FLAGS = {FLOOR: [], FLOOR_ONE_CPU: ["--one-cpu"], FLOOR_BARE: ["--bare"]}
SERVICE, LOG_OFF, TWO_WORKERS = "service", "service, input log off", "service, 2 workers"
EXTRA_CONFIG: dict[str, dict[str, dict[str, Any]]] = {
    SERVICE: {}, LOG_OFF: {"inputlog": {"enabled": False}},
    TWO_WORKERS: {"service": {"workers": 2}}}
# Targets (issue 12), on this run's medians.
FLOOR_LATENCY_MARGIN_MS = 1.2   # one client: service p50 <= floor p50 + this
SHARE_OF_FLOOR = 0.55           # 32 clients, one process
TWO_WORKERS_SHARE = 1.0         # 32 clients, two worker processes
P99_MS = 80.0
INPUTLOG_SHARE = 0.95           # input log on vs off


class FloorServer:
    """bench/floor.py in a subprocess on a free loopback port."""

    def __init__(self, workdir: Path, args: list[str]):
        self.port = base.free_port()
        self.log_path = workdir / ("floor" + "".join(args).replace("--", "-") + ".log")
        self.args = args
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{base.LOOPBACK}:{self.port}"

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(base.LOOPBACK, self.port, timeout=timeout)

    def start(self, timeout: float = 180.0) -> "FloorServer":
        """Started beside the TF servers, which take the cores for a while: a long bound."""
        with open(self.log_path, "wb") as handle:
            self.proc = subprocess.Popen([sys.executable, str(base.BENCH_DIR / "floor.py"),
                                          "--port", str(self.port), *self.args], cwd=base.REPO,
                                         stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the floor server exited with {self.proc.returncode}")
            try:
                conn = self.connection(timeout=5.0)
                conn.request("GET", "/v1/models/digits-cnn/predict")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the floor server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        base.stop_process(self.proc)


def servers(graph: base.GraphInfo, workdir: Path) -> dict[str, Any]:
    """The six servers of the section, started side by side (not yet ready)."""
    made: dict[str, Any] = {name: FloorServer(workdir, args) for name, args in FLOOR_FLAGS.items()}
    for index, (name, extra) in enumerate(EXTRA_CONFIG.items()):
        made[name] = base.BenchServer(graph, workdir / f"server-{index}", extra)
    return made


def one_client(server: Any, body: bytes, requests: int, warmup: int) -> dict[str, Any]:
    conn = server.connection()
    for _ in range(warmup):
        base.post(conn, body, "image/png")
    durations, non200 = [], 0
    for _ in range(requests):
        t0 = time.perf_counter()
        status, _, _ = base.post(conn, body, "image/png")
        durations.append(time.perf_counter() - t0)
        non200 += status != 200
    conn.close()
    return {**base.percentiles(durations), "requests": requests, "non200": non200}


def measure(running: dict[str, Any], plan: base.Plan,
            load: Callable[[Any, float], dict[str, Any]]) -> dict[str, Any]:
    """``plan.floor_rounds`` rounds over every server; ``load(server, seconds)`` runs
    CLIENTS clients."""
    body = base.PNG_FIXTURE.read_bytes()
    rounds: list[dict[str, dict[str, Any]]] = []
    for server in running.values():
        load(server, 2.0)  # warm-up: connections, threads, caches
    for number in range(plan.floor_rounds):
        this: dict[str, dict[str, Any]] = {}
        for name, server in running.items():
            latency = one_client(server, body, plan.floor_latency_requests, plan.http_warmup)
            pid = server.proc.pid
            cpu0 = base.process_tree_cpu_seconds(pid)
            loaded = load(server, plan.floor_load_seconds)
            cpu = base.process_tree_cpu_seconds(pid) - cpu0
            this[name] = {"latency": latency, "load": loaded,
                          "cpu_ms_per_request": round(1000 * cpu / max(1, loaded["requests"]), 3)}
            base.log(f"(g) round {number + 1}, {name}: 1 client p50 "
                     f"{latency['p50_ms']:.3f} ms; {base.CLIENTS} clients "
                     f"{loaded['requests_per_s']:.0f} req/s, p99 {loaded['p99_ms']:.1f} ms, "
                     f"{loaded['non200']} errors, {this[name]['cpu_ms_per_request']} ms CPU/request")
        rounds.append(this)
    return summarise(rounds)


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the rounds, per server; per-round ratios to the floor, and log on/off."""
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    names = list(rounds[0])
    summary: dict[str, Any] = {"rounds": rounds, "servers": {}}
    for name in names:
        runs = [r[name] for r in rounds]
        summary["servers"][name] = {
            "p50_1_client_ms": median([r["latency"]["p50_ms"] for r in runs]),
            "p99_1_client_ms": median([r["latency"]["p99_ms"] for r in runs]),
            "requests_per_s": median([r["load"]["requests_per_s"] for r in runs]),
            "p50_ms": median([r["load"]["p50_ms"] for r in runs]),
            "p99_ms": median([r["load"]["p99_ms"] for r in runs]),
            "errors": sum(r["load"]["non200"] + r["latency"]["non200"] for r in runs),
            "cpu_ms_per_request": median([r["cpu_ms_per_request"] for r in runs]),
            "share_of_floor": median([r[name]["load"]["requests_per_s"]
                                      / r[FLOOR]["load"]["requests_per_s"] for r in rounds]),
            "share_of_floor_one_cpu": median([
                r[name]["load"]["requests_per_s"] / r[FLOOR_ONE_CPU]["load"]["requests_per_s"]
                for r in rounds]) if FLOOR_ONE_CPU in names else None,
            "p50_over_floor_ms": median([r[name]["latency"]["p50_ms"]
                                         - r[FLOOR]["latency"]["p50_ms"] for r in rounds])}
    if FLOOR_BARE in names:  # CPU per request: the floor's, less what is left without the layer
        summary["request_layer"] = {
            "cpu_ms_per_request": median([r[FLOOR]["cpu_ms_per_request"]
                                          - r[FLOOR_BARE]["cpu_ms_per_request"] for r in rounds]),
            "share_of_floor_cpu": median([1 - r[FLOOR_BARE]["cpu_ms_per_request"]
                                          / r[FLOOR]["cpu_ms_per_request"] for r in rounds])}
    summary["inputlog_share"] = median([r[SERVICE]["load"]["requests_per_s"]
                                        / r[LOG_OFF]["load"]["requests_per_s"] for r in rounds])
    return summary


def rows(g: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """bench/RESULTS.md's measurement rows for section (g)."""
    out = []
    for name, m in g.get("servers", {}).items():
        out.append(("g", f"{name}: 1 client p50", f"{base.fmt(m['p50_1_client_ms'], 3)} ms",
                    f"p99 {base.fmt(m['p99_1_client_ms'], 3)} ms; "
                    f"{base.fmt(m['p50_over_floor_ms'], 3)} ms over the floor"))
        out.append(("g", f"{name}: {base.CLIENTS} clients", f"{base.fmt(m['requests_per_s'])} req/s",
                    f"{m['share_of_floor']:.3f} of the floor{_of_one_cpu(m)}; "
                    f"p50 {base.fmt(m['p50_ms'], 1)} ms, "
                    f"p99 {base.fmt(m['p99_ms'], 1)} ms, {m['errors']} errors, "
                    f"{base.fmt(m['cpu_ms_per_request'], 3)} ms of CPU per request"))
    if "request_layer" in g:
        layer = g["request_layer"]
        out.append(("g", "CherryPy's request layer, per floor request",
                    f"{base.fmt(layer['cpu_ms_per_request'], 3)} ms of CPU",
                    f"{layer['share_of_floor_cpu']:.0%} of the floor's CPU per request "
                    "(the floor less the bare floor, median of the rounds)"))
    if "inputlog_share" in g:
        out.append(("g", "input log on / off, 32 clients", f"{g['inputlog_share']:.3f}",
                    "median of the rounds' ratios"))
    return out


def _of_one_cpu(m: dict[str, Any]) -> str:
    share = m.get("share_of_floor_one_cpu")
    return f" ({share:.3f} of the one-CPU floor)" if share is not None else ""


def targets(g: dict[str, Any], add: Callable[..., None]) -> None:
    """Judge section (g) with ``add(key, rule, measured, required, unit, at_most=False)``."""
    s = g.get("servers")
    if not s:
        return
    floor, one, two = s[FLOOR], s[SERVICE], s[TWO_WORKERS]
    add("g", f"1 client p50 <= floor p50 + {FLOOR_LATENCY_MARGIN_MS} ms (28x28 PNG)",
        one["p50_1_client_ms"], floor["p50_1_client_ms"] + FLOOR_LATENCY_MARGIN_MS, "ms",
        at_most=True)
    add("g", f"{base.CLIENTS} clients, one process >= {SHARE_OF_FLOOR} x the floor's req/s",
        one["share_of_floor"], SHARE_OF_FLOOR, "x floor")
    add("g", f"{base.CLIENTS} clients, one process: p99 <= {P99_MS:g} ms", one["p99_ms"],
        P99_MS, "ms", at_most=True)
    add("g", f"{base.CLIENTS} clients, one process: no errors", one["errors"], 0, "errors",
        at_most=True)
    add("g", f"{base.CLIENTS} clients, 2 workers >= {TWO_WORKERS_SHARE} x the floor's req/s",
        two["share_of_floor"], TWO_WORKERS_SHARE, "x floor")
    add("g", f"input log on >= {INPUTLOG_SHARE:.0%} of its throughput off", g["inputlog_share"],
        INPUTLOG_SHARE, "x off")
