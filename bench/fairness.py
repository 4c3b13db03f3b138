"""Fairness under a flood: does one key hammering the service starve another key?

One server with API keys. A "victim" key sends single PNG predictions one after another
(keep-alive) and we record its latency, first on an idle server, then while a "flooder" key
hammers the same route from many connections (wrk, or Python processes without it). The
flooder is rate-limited (``--flood-rps``), so most of its requests are refused with 429 at
the door; a third phase floods with an unlimited key, to show what the limit buys.
Target: the victim's p99 under the limited flood stays within 3x its unloaded p99.

    python bench/fairness.py            # writes its section of bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench import run as bench  # noqa: E402  (the main benchmark's server and machine helpers)
from bench import sections  # noqa: E402
from service.access.keys import add_key  # noqa: E402

PNG = (bench.REPO / "tests" / "fixtures" / "digit7_28.png")
TARGET_RATIO = 3.0


def victim_latencies(server: bench.BenchServer, key: str, requests: int,
                     until: float | None = None) -> dict:
    """``requests`` sequential predictions on one kept-alive connection (stopping early at
    the ``time.monotonic()`` instant ``until``)."""
    body = PNG.read_bytes()
    headers = {"Content-Type": "image/png", "Authorization": f"Bearer {key}"}
    conn = server.connection()
    times, statuses = [], {}
    for _ in range(requests):
        if until is not None and time.monotonic() > until:
            break
        started = time.perf_counter()
        conn.request("POST", bench.PREDICT_PATH, body, headers)
        response = conn.getresponse()
        response.read()
        times.append(time.perf_counter() - started)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.will_close:
            conn.close()
            conn = server.connection()
    conn.close()
    return {**bench.percentiles(times), "requests": len(times), "statuses": statuses}


def _python_flooder(port: int, key: str, seconds: float, threads: int, queue) -> None:
    body = PNG.read_bytes()
    headers = {"Content-Type": "image/png", "Authorization": f"Bearer {key}"}
    counts: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        conn = http.client.HTTPConnection(bench.LOOPBACK, port, timeout=30)
        while time.monotonic() < stop_at:
            try:
                conn.request("POST", bench.PREDICT_PATH, body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                if response.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection(bench.LOOPBACK, port, timeout=30)
            except OSError:
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(bench.LOOPBACK, port, timeout=30)
            with lock:
                counts[status] = counts.get(status, 0) + 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.put(counts)


class Flood:
    """``connections`` clients of one key posting as fast as they can, for ``seconds``."""

    def __init__(self, server: bench.BenchServer, key: str, connections: int, seconds: float):
        self.server, self.key, self.connections, self.seconds = server, key, connections, seconds
        self.result: dict = {}

    def __enter__(self) -> "Flood":
        if shutil.which("wrk"):
            self._thread = threading.Thread(target=self._wrk)
        else:
            self._thread = threading.Thread(target=self._python)
        self._thread.start()
        self.ends = time.monotonic() + self.seconds - 0.5  # the victim measures inside it
        time.sleep(1.0)  # let the flood build up before the victim measures
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join()

    def _wrk(self) -> None:
        env = {**os.environ, "BENCH_BODY_FILE": str(PNG), "BENCH_CONTENT_TYPE": "image/png"}
        command = [shutil.which("wrk"), "-t", "1", "-c", str(self.connections), "-d",
                   f"{self.seconds:.0f}s", "-H", f"Authorization: Bearer {self.key}",
                   "-s", str(BENCH_DIR / "predict.lua"), self.server.url + bench.PREDICT_PATH]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        line = next(l for l in done.stdout.splitlines() if l.startswith("BENCH_JSON "))
        data = json.loads(line[len("BENCH_JSON "):])
        self.result = {"generator": "wrk", "requests": data["responses"],
                       "non200": data["non200"], "per_s": data["responses"] / self.seconds}

    def _python(self) -> None:
        processes = 2
        queue = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=_python_flooder, args=(
            self.server.port, self.key, self.seconds, self.connections // processes, queue))
            for _ in range(processes)]
        for proc in procs:
            proc.start()
        counts: dict[int, int] = {}
        for _ in procs:
            for status, n in queue.get().items():
                counts[status] = counts.get(status, 0) + n
        for proc in procs:
            proc.join()
        total = sum(counts.values())
        self.result = {"generator": "python", "requests": total,
                       "non200": total - counts.get(200, 0), "per_s": total / self.seconds}


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    keys_file = workdir / "keys.json"
    victim = add_key(keys_file, "victim")[1]
    flooder = add_key(keys_file, "flooder", limits={"requests_per_s": args.flood_rps})[1]
    unlimited = add_key(keys_file, "unlimited")[1]
    graph = bench.load_graph_info(bench.REPO / "graphs", None)
    server = bench.BenchServer(graph, workdir)
    with open(server.config_path, "a") as handle:
        handle.write(f'[auth]\nkeys_file = "{keys_file}"\n')
    server.start()
    try:
        victim_latencies(server, victim, 200)  # warm-up
        results = {"unloaded": victim_latencies(server, victim, args.requests)}
        bench.log(f"unloaded: p50 {results['unloaded']['p50_ms']:.2f} ms, "
                  f"p99 {results['unloaded']['p99_ms']:.2f} ms")
        for phase, key in (("limited_flood", flooder), ("unlimited_flood", unlimited)):
            with Flood(server, key, args.connections, args.flood_seconds) as flood:
                results[phase] = victim_latencies(server, victim, args.requests, flood.ends)
            results[phase]["flood"] = flood.result
            bench.log(f"{phase}: victim p50 {results[phase]['p50_ms']:.2f} ms, p99 "
                      f"{results[phase]['p99_ms']:.2f} ms; flood {flood.result}")
        results["unloaded_again"] = victim_latencies(server, victim, args.requests)
    finally:
        server.stop()
    return results


def markdown(results: dict, args: argparse.Namespace) -> str:
    machine = bench.machine_info()
    base = results["unloaded"]["p99_ms"]
    ratio = results["limited_flood"]["p99_ms"] / base
    met = "met" if ratio <= TARGET_RATIO else "**not met**"
    lines = [
        "## Fairness under a flood (`make fairness`, bench/fairness.py)", "",
        f"- Date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}; machine: "
        f"{machine['cores']} cores ({machine['cpu_model']}), Python {machine['python']}; "
        f"git {bench.git_commit()}",
        f"- Victim: one key, {args.requests} sequential PNG predictions per phase, keep-alive. "
        f"Flooder: {args.connections} connections of another key for {args.flood_seconds:g} s, "
        f"limited to {args.flood_rps:g} requests/s; then an unlimited key, for contrast.", "",
        "| Phase | victim p50 ms | victim p99 ms | victim statuses | flood req/s | flood non-200 |",
        "|---|---|---|---|---|---|",
    ]
    for phase in ("unloaded", "limited_flood", "unlimited_flood", "unloaded_again"):
        r = results[phase]
        flood = r.get("flood", {})
        lines.append(f"| {phase.replace('_', ' ')} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['statuses']} | {flood.get('per_s', 0):,.0f} | "
                     f"{flood.get('non200', '-')} |")
    unlimited = results["unlimited_flood"]["p99_ms"] / base
    lines += ["", f"- Victim p99 under the rate-limited flood: {ratio:.2f}x its unloaded p99 "
              f"(target <= {TARGET_RATIO:g}x): {met}. Under an unlimited flood: {unlimited:.2f}x.",
              ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="victim requests per phase")
    parser.add_argument("--connections", type=int, default=16, help="flooder connections")
    parser.add_argument("--flood-seconds", type=float, default=0,
                        help="default: long enough to cover the victim's phase")
    parser.add_argument("--flood-rps", type=float, default=20.0, help="the flooder's limit")
    parser.add_argument("--no-write", action="store_true", help="print, don't touch RESULTS.md")
    args = parser.parse_args(argv)
    args.flood_seconds = args.flood_seconds or max(10.0, args.requests * 0.012)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        results = measure(args, Path(tmp))
    text = markdown(results, args)
    print(text)
    if not args.no_write:
        sections.write_section(BENCH_DIR / "RESULTS.md", "fairness", text)
        (BENCH_DIR / "fairness.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
