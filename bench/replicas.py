#!/usr/bin/env python3
"""Shared state vs the embedded defaults: the "replicas" section of bench/RESULTS.md.

    make bench-replicas                                           # 3 rounds x 2 targets x 2 loads
    .venv/bin/python bench/replicas.py --duration 3 --rounds 1 --out /tmp/br   # smoke

Two targets on this machine, both with 2 serving processes behind nginx, both models loaded,
a rate limit and an in-flight cap on (so every request updates the limiter's state) and the
input log on:

  embedded  ``python -m service cluster --workers 2``: records in SQLite, limits in the
            machine's shared SQLite file, images in a local directory, graphs from graphs/
  shared    ``python -m service replicas --replicas 2`` (service/replicas/local.py): records
            and keys' table in PostgreSQL, limits in Redis, graphs and images in S3 (moto)

The rounds interleave the targets (this VM's speed drifts) and the table gives medians. Loads
at 32 keep-alive connections (wrk): one 28x28 PNG per request, and a JSON body of 64 base64
MNIST PNGs per request. Then the writer alone: 2,000 single-image predictions' records
written by the input log's writer into SQLite and into PostgreSQL, its CPU plus the database
server's, per record. Target: the shared stores cost at most 10 % of the embedded
throughput, for each load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import run as base  # noqa: E402  (after the path)
from bench import sections  # noqa: E402
from bench.workers import cpu_seconds, process_tree  # noqa: E402
from service.replicas.local import LocalReplicas, wait_ready  # noqa: E402

SECTION = "replicas"
CLIENTS = 32
BATCH = 64
SHARE = 0.90           # shared / embedded throughput, each load (the target)
WARMUP_S = 2.0
WRITER_RECORDS = 2000
# Both targets: every request takes a token and an in-flight slot (never refused).
LIMITS = "[ratelimit]\nrequests_per_s = 1000000.0\nmax_in_flight = 10000\ntarpit_s = 0\n"


class Endpoint:
    """What bench/run.py's run_wrk needs of a server: its URL."""

    def __init__(self, port: int):
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{base.LOOPBACK}:{self.port}"


def start_embedded(workdir: Path) -> tuple[subprocess.Popen, Endpoint]:
    config = workdir / "embedded.conf"
    moved = base.var_paths_moved_to(workdir / "var")
    text = "".join(f"[{name}]\n" + "".join(f'{k} = "{v}"\n' for k, v in values.items())
                   for name, values in moved.items())
    config.write_text(text + LIMITS)
    endpoint = Endpoint(base.free_port())
    log_path = workdir / "embedded.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "cluster", "--config", str(config),
                             "--port", str(endpoint.port), "--workers", "2",
                             "--prefix", str(workdir / "front")], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(endpoint.url, proc, log_path, name="cluster --workers 2")
    return proc, endpoint


def load(endpoint: Endpoint, kind: str, seconds: float, batch_file: Path) -> dict[str, Any]:
    if kind == "png":
        result = base.run_wrk(endpoint, base.PNG_FIXTURE, seconds, 10_000_000, CLIENTS)
        result["images_per_s"] = result["requests_per_s"]
    else:
        result = base.run_wrk(endpoint, batch_file, seconds, 10_000_000, CLIENTS,
                              content_type="application/json")
        result["images_per_s"] = round(result["requests_per_s"] * BATCH, 1)
    return result


def measure(targets: dict[str, Endpoint], rounds: int, seconds: float,
            batch_file: Path) -> list[dict[str, Any]]:
    rows = []
    for number in range(1, rounds + 1):
        for name, endpoint in targets.items():
            load(endpoint, "png", WARMUP_S, batch_file)
            for kind in ("png", f"json{BATCH}"):
                result = load(endpoint, kind, seconds, batch_file)
                base.log(f"round {number}/{rounds} {name} {kind}: {result['requests_per_s']:.1f} "
                         f"req/s ({result['images_per_s']:.0f} images/s), p50 "
                         f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                         f"{result['non200']} errors")
                rows.append({"round": number, "target": name, "load": kind, **result})
    return rows


def writer_cost(database_url: str | None, workdir: Path,
                server_pids: Callable[[], list[int]] = list) -> dict[str, Any]:
    """CPU per record of the input log's writer (and of the database server, if any)."""
    import numpy as np

    from service.config import InputLogSettings
    from service.dataplane import Instance, ModelResult, Prediction, RequestContext
    from service.inputlog import InputLog

    image = base.PNG_FIXTURE.read_bytes()
    row = np.full(10, 0.01)
    top = [(7, "7", 0.91)]
    result = ModelResult("digits-cnn", 1, [Prediction(7, "7", 0.91, top, row)],
                         np.zeros((1, 28, 28), np.float32), {"total": 1.0})
    log = InputLog(InputLogSettings(dir=workdir / f"writer-{bool(database_url)}",
                                    database_url=database_url, queue_size=WRITER_RECORDS + 10),
                   labels_for=lambda model: [str(i) for i in range(10)])
    log.start()
    contexts = [RequestContext(f"bench-{i}", route="/bench", client="127.0.0.1")
                for i in range(WRITER_RECORDS)]
    pids = server_pids()  # after start(): the writer's connection (a backend process) is open
    cpu0, server0, wall0 = time.process_time(), cpu_seconds(pids), time.perf_counter()
    for context in contexts:
        log.record(context, [Instance(image)], {"digits-cnn": result})
    assert log.flush(120)
    wall = time.perf_counter() - wall0
    cpu, server = time.process_time() - cpu0, cpu_seconds(pids) - server0
    written = log.stats()["written"]
    log.stop()
    return {"records": written, "wall_s": round(wall, 3),
            "writer_cpu_us_per_record": round(cpu / written * 1e6, 1),
            "server_cpu_us_per_record": round(server / written * 1e6, 1),
            "total_cpu_us_per_record": round((cpu + server) / written * 1e6, 1)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = summary.setdefault(f"{row['target']}/{row['load']}", {"runs": []})
        entry["runs"].append(row)
    for entry in summary.values():
        runs = entry.pop("runs")
        for key in ("requests_per_s", "images_per_s", "p50_ms", "p99_ms"):
            entry[key] = round(statistics.median(r[key] for r in runs), 2)
        entry["rounds_requests_per_s"] = [r["requests_per_s"] for r in runs]
        entry["errors"] = sum(r["non200"] for r in runs)
    return summary


def markdown(summary: dict[str, dict], writer: dict[str, dict], info: dict[str, Any],
             rounds: int, seconds: float) -> tuple[str, list[dict[str, Any]]]:
    verdicts = []
    lines = [f"## Replicas on shared stores vs the embedded defaults ({info['date']})", "",
             f"`make bench-replicas` on {info['machine']}: {rounds} interleaved round(s) of "
             f"{seconds:g} s per load, 32 connections (wrk) through nginx; medians. Both targets: "
             "2 serving processes, both models, the input log on, a rate limit and an in-flight "
             "cap on every request. *embedded*: `cluster --workers 2` (SQLite records, the "
             "machine's SQLite limits, local images); *shared*: `replicas --replicas 2` "
             "(PostgreSQL records, Redis limits, S3 graphs and images).", "",
             "| load | target | req/s | images/s | p50 ms | p99 ms | errors | rounds (req/s) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for load in ("png", f"json{BATCH}"):
        for target in ("embedded", "shared"):
            s = summary[f"{target}/{load}"]
            each = ", ".join(f"{v:.0f}" for v in s["rounds_requests_per_s"])
            lines.append(f"| {load} | {target} | {s['requests_per_s']:.1f} | "
                         f"{s['images_per_s']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                         f"{s['errors']} | {each} |")
        shared, embedded = summary[f"shared/{load}"], summary[f"embedded/{load}"]
        ratio = shared["requests_per_s"] / embedded["requests_per_s"]
        verdicts.append({"rule": f"shared / embedded throughput, {load}, 32 clients",
                         "measured": f"{ratio:.2f}", "required": f">= {SHARE:.2f}",
                         "met": ratio >= SHARE})
    lines += ["", f"Writing the records of {WRITER_RECORDS:,} single-image predictions (the "
              "input log's writer alone, in this process; the database server's CPU from "
              "/proc):", "",
              "| records in | wall s | writer CPU µs/record | server CPU µs/record "
              "| total µs/record |",
              "|---|---:|---:|---:|---:|"]
    for name, w in writer.items():
        lines.append(f"| {name} | {w['wall_s']:.2f} | {w['writer_cpu_us_per_record']:.0f} | "
                     f"{w['server_cpu_us_per_record']:.0f} | {w['total_cpu_us_per_record']:.0f} |")
    lines += ["", "| target | measured | required | met |", "|---|---:|---:|---|"]
    lines += [f"| {v['rule']} | {v['measured']} | {v['required']} | {'yes' if v['met'] else 'NO'} |"
              for v in verdicts]
    return "\n".join(lines) + "\n", verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    batch_file = workdir / "batch64.json"
    batch_file.write_bytes(base.batch_payload(BATCH))
    base.log("starting the embedded target (cluster --workers 2)")
    embedded_proc, embedded = start_embedded(workdir)
    base.log("starting the shared target (replicas --replicas 2: PostgreSQL, Redis, S3)")
    shared = LocalReplicas(prefix=workdir / "replicas", port=base.free_port(), count=2,
                           extra_config=LIMITS)
    try:
        shared.start()
        rows = measure({"embedded": embedded, "shared": Endpoint(shared.port)}, args.rounds,
                       args.duration, batch_file)
        base.log("the writer alone: SQLite, then PostgreSQL")
        writer = {"SQLite": writer_cost(None, workdir),
                  "PostgreSQL": writer_cost(shared.postgres.new_database("writer"), workdir,
                                            lambda: process_tree(shared.postgres.proc.pid))}
    finally:
        shared.stop()
        base.stop_process(embedded_proc)
    info = {**base.machine_info(), "date": dt.date.today().isoformat()}
    info["machine"] = f"{info['cores']} cores ({info['cpu_model']}), {info['ram_gib']} GiB"
    summary = summarise(rows)
    text, verdicts = markdown(summary, writer, info, args.rounds, args.duration)
    args.out.mkdir(parents=True, exist_ok=True)
    sections.write_section(args.out / "RESULTS.md", SECTION, text)
    (args.out / "replicas.json").write_text(json.dumps(
        {"machine": info, "summary": summary, "writer": writer, "verdicts": verdicts,
         "measurements": rows}, indent=2, default=str) + "\n")
    base.log(f"wrote section '{SECTION}' of {args.out / 'RESULTS.md'}")
    return 0 if all(v["met"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
