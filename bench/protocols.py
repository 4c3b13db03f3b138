#!/usr/bin/env python3
"""The standard protocols' cost against the native route, one server, one run: the
"protocols" section of bench/RESULTS.md.

    make bench-protocols                                      # 3 rounds, ~4 min
    .venv/bin/python bench/protocols.py --rounds 1 --seconds 2 --out /tmp/bp   # smoke

Pairs, each the same images in the same encoding where the protocol allows it:

  one PNG, JSON base64    native ``{"instances": [{"b64"}]}``   vs V2 JSON BYTES (base64)
  one PNG, raw bytes      native ``image/png`` body              vs V2 binary tensor extension
  one PNG, TF Serving     native JSON base64                     vs ``:predict`` row format
  256 PNGs               native JSON base64 (its only batch form) vs V2 binary extension

Each round measures every variant with one keep-alive client (sequential requests: p50, the
per-request cost), then every variant under wrk with 32 connections for single images, 2 for
batches (throughput). Before each measurement the input log's writer has caught up (its
queue is empty), so no variant pays for the previous one's backlog. The rounds interleave
the variants because this VM's speed drifts; figures are medians over rounds.
Target (issue 14): the protocol's route costs at most 10 % more than the native one --
throughput >= native / 1.1 and one client's p50 <= 1.1 x native's.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import io
import json
import re
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import run as base  # noqa: E402  (after the path)
from bench import sections  # noqa: E402

SECTION = "protocols"
MAX_EXTRA_COST = 1.10
V2_PATH = f"/v2/models/{base.MODEL}/infer"
TF_PATH = f"/v1/models/{base.MODEL}:predict"
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Variant:
    name: str
    path: str
    body: bytes
    content_type: str
    images: int
    extra_header: str = ""  # "Name: value"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.extra_header:
            name, _, value = self.extra_header.partition(": ")
            headers[name] = value
        return headers


def mnist_pngs(count: int) -> list[bytes]:
    from PIL import Image

    from service.models.datasets import load_mnist

    images, _ = load_mnist("test")
    pngs = []
    for image in images[:count]:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        pngs.append(out.getvalue())
    return pngs


def native_json(pngs: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(p).decode()} for p in pngs]}
                      ).encode()


def v2_json(pngs: list[bytes]) -> bytes:
    return json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES",
                                   "shape": [len(pngs)],
                                   "data": [base64.b64encode(p).decode() for p in pngs]}]}
                      ).encode()


def v2_binary(pngs: list[bytes]) -> tuple[bytes, str]:
    tensor = b"".join(struct.pack("<I", len(p)) + p for p in pngs)
    header = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES",
                                     "shape": [len(pngs)],
                                     "parameters": {"binary_data_size": len(tensor)}}],
                         "outputs": [{"name": "probabilities"}]}).encode()
    return header + tensor, f"{HEADER_LENGTH}: {len(header)}"


def variants() -> dict[str, Variant]:
    one, batch = base.PNG_FIXTURE.read_bytes(), mnist_pngs(base.JSON_BATCH)
    binary_one, header_one = v2_binary([one])
    binary_batch, header_batch = v2_binary(batch)
    json_ = "application/json"
    made = [
        Variant("native JSON b64", base.PREDICT_PATH, native_json([one]), json_, 1),
        Variant("V2 JSON BYTES", V2_PATH, v2_json([one]), json_, 1),
        Variant("native image/png", base.PREDICT_PATH, one, "image/png", 1),
        Variant("V2 binary", V2_PATH, binary_one, "application/octet-stream", 1, header_one),
        Variant("TF Serving :predict b64", TF_PATH, native_json([one]), json_, 1),
        Variant("native JSON b64 x256", base.PREDICT_PATH, native_json(batch), json_, 256),
        Variant("V2 binary x256", V2_PATH, binary_batch, "application/octet-stream", 256,
                header_batch),
    ]
    return {v.name: v for v in made}


PAIRS = [("V2 JSON BYTES", "native JSON b64"), ("V2 binary", "native image/png"),
         ("TF Serving :predict b64", "native JSON b64"), ("V2 binary x256", "native JSON b64 x256")]


def one_client(server: base.BenchServer, variant: Variant, requests: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(base.LOOPBACK, server.port, timeout=60)
    durations, bad = [], 0
    for index in range(requests + 5):
        started = time.perf_counter()
        conn.request("POST", variant.path, variant.body, variant.headers())
        response = conn.getresponse()
        response.read()
        if index >= 5:  # the first few warm the connection and the path
            durations.append(time.perf_counter() - started)
            bad += response.status != 200
    conn.close()
    return {"p50_ms": round(statistics.median(durations) * 1000, 3), "non200": bad}


def load(server: base.BenchServer, variant: Variant, seconds: float, body_dir: Path
         ) -> dict[str, Any]:
    body = body_dir / (re.sub(r"[^\w]+", "_", variant.name) + ".body")
    body.write_bytes(variant.body)
    clients = base.CLIENTS if variant.images == 1 else 2
    result = base.run_wrk(server, body, seconds, 10**9, clients=clients, path=variant.path,
                          content_type=variant.content_type, extra_header=variant.extra_header)
    return {"clients": clients, "requests_per_s": result["requests_per_s"],
            "images_per_s": round(result["requests_per_s"] * variant.images, 1),
            "p99_ms": result["p99_ms"], "load_non200": result["non200"]}


def drained(server: base.BenchServer, timeout: float = 120.0) -> None:
    """Wait until the input log has written everything queued (its queue depth is 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.get("/metrics")[1].decode()
        depth = next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("digits_inputlog_queue_depth")), 0.0)
        if depth == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the input log did not catch up within {timeout:.0f} s")


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    graph = base.load_graph_info(REPO / "graphs", None)
    server = base.BenchServer(graph, workdir / "server").start()
    made = variants()
    rounds: list[dict[str, Any]] = []
    try:
        for number in range(1, args.rounds + 1):
            figures: dict[str, dict[str, Any]] = {}
            for name, variant in made.items():
                drained(server)
                figures[name] = one_client(server, variant, args.requests if variant.images == 1
                                           else max(10, args.requests // 20))
            for name, variant in made.items():
                drained(server)
                figures[name].update(load(server, variant, args.seconds, workdir))
                figures[name]["non200"] += figures[name].pop("load_non200")
                base.log(f"round {number}, {name}: 1 client p50 {figures[name]['p50_ms']} ms; "
                         f"{figures[name]['clients']} clients "
                         f"{figures[name]['images_per_s']} images/s")
            rounds.append(figures)
    finally:
        server.stop()
    return {"graph": f"{base.MODEL} v{graph.version}", "rounds": rounds,
            "medians": {name: {key: statistics.median(r[name][key] for r in rounds)
                               for key in ("p50_ms", "images_per_s", "p99_ms")}
                        for name in made},
            "errors": {name: sum(r[name]["non200"] for r in rounds) for name in made}}


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    machine = base.machine_info()
    medians, lines = result["medians"], []
    lines += ["## The standard protocols against the native route (`make bench-protocols`, "
              "bench/protocols.py)", "",
              f"- Date (UTC): {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S}; machine: "
              f"{machine['cores']} cores, {machine['cpu_model']}; graph {result['graph']}; "
              f"git {base.git_commit()}",
              f"- One server (defaults: input log, metrics, access log on); {args.rounds} "
              f"interleaved round(s); per variant: one keep-alive client ({args.requests} "
              f"requests, 1/20 of that for batches) for p50, then wrk for {args.seconds:g} s "
              f"(32 connections; 2 for 256-image batches). Medians over the rounds.", "",
              "| variant | 1 client p50 ms | images/s (wrk) | p99 ms (wrk) | errors |",
              "|---|---|---|---|---|"]
    for name, m in medians.items():
        lines.append(f"| {name} | {m['p50_ms']:.3f} | {m['images_per_s']:,.1f} | "
                     f"{m['p99_ms']:.1f} | {result['errors'][name]} |")
    lines += ["", "| Target (each protocol vs the native route, same run) | Measured | "
                  "Required | Verdict |", "|---|---|---|---|"]
    met = 0
    for protocol, native in PAIRS:
        p, n = medians[protocol], medians[native]
        checks = [(f"{protocol} images/s vs {native}", p["images_per_s"] / n["images_per_s"],
                   1 / MAX_EXTRA_COST, ">="),
                  (f"{protocol} 1-client p50 vs {native}", p["p50_ms"] / n["p50_ms"],
                   MAX_EXTRA_COST, "<=")]
        for label, ratio, bound, op in checks:
            ok = ratio >= bound if op == ">=" else ratio <= bound
            met += ok
            lines.append(f"| {label} | {ratio:.3f} x | {op} {bound:.3f} x | "
                         f"{'met' if ok else '**NOT met**'} |")
    lines += ["", f"{met} of {2 * len(PAIRS)} targets met.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="wrk per variant and round")
    parser.add_argument("--requests", type=int, default=400,
                        help="one client's sequential requests per variant and round")
    parser.add_argument("--out", type=Path, help="write RESULTS.md here instead of bench/")
    args = parser.parse_args(argv)
    if base.shutil.which("wrk") is None:
        print("bench/protocols.py needs wrk (apt install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="digits-protocols-") as tmp:
        result = measure(args, Path(tmp))
    out = (args.out or base.BENCH_DIR) / "RESULTS.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    sections.write_section(out, SECTION, markdown(result, args))
    (out.parent / "protocols.json").write_text(json.dumps(result, indent=2) + "\n")
    base.log(f"wrote the {SECTION!r} section of {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
