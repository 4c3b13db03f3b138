"""Every case of the hostile-input table (tests/web/test_hostile.py) against a fresh server,
with what came back, how fast, and the server's memory before and after.

    python bench/hostile.py        # writes its section of bench/RESULTS.md
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "web")]

from bench import run as bench  # noqa: E402
from bench import sections  # noqa: E402
import test_hostile as table  # noqa: E402
from support import FIXTURES, ServerProcess  # noqa: E402


def outcome(reply: table.Reply) -> tuple[int, str | None]:
    try:
        return reply.status, json.loads(reply.text).get("error", {}).get("code")
    except (ValueError, AttributeError):
        return reply.status, None


def run_cases(url: str) -> list[dict]:
    rows = []
    for param in table.CASES:
        send, status, code = param.values
        reply = send(url)
        got_status, got_code = outcome(reply)
        rows.append({"case": param.id, "expected": f"{status} {code or ''}".strip(),
                     "got": f"{got_status} {got_code or ''}".strip(),
                     "ms": round(reply.elapsed * 1000, 1),
                     "ok": got_status == status and (code is None or got_code == code)})
        bench.log(f"{param.id}: {rows[-1]['got']} in {rows[-1]['ms']} ms")
    return rows


def measure(tmp: Path) -> dict:
    root = tmp / "images"
    root.mkdir()
    (root / "digit7_28.png").write_bytes((FIXTURES / "digit7_28.png").read_bytes())
    (root / "sub").mkdir()  # the table's directory case, as in tests/conftest.py
    _, sock = table.make_hostile_entries(root)
    proc = ServerProcess(tmp, f'[service]\nmodels = ["digits-cnn"]\nimages_root = "{root}"\n')
    proc.start()
    try:
        rss_start = table.rss_mb(proc.proc.pid)
        started = time.monotonic()
        rows = run_cases(proc.url)
        seconds = time.monotonic() - started
        rss_end = table.rss_mb(proc.proc.pid)
    finally:
        proc.stop()
        sock.close()
    return {"rows": rows, "rss_start_mb": rss_start, "rss_end_mb": rss_end, "seconds": seconds}


def markdown(result: dict) -> str:
    rows = result["rows"]
    passed = sum(r["ok"] for r in rows)
    machine = bench.machine_info()
    lines = [
        "## Hostile input (`make hostile`, bench/hostile.py)", "",
        f"- Date (UTC): {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}; machine: "
        f"{machine['cores']} cores ({machine['cpu_model']}); git {bench.git_commit()}",
        f"- {len(rows)} cases from the table in tests/web/test_hostile.py, one after another "
        f"against a fresh server (digits-cnn, default limits): **{passed}/{len(rows)}** "
        f"answered as expected, slowest {max(r['ms'] for r in rows):,.0f} ms.",
        f"- Server RSS {result['rss_start_mb']:.0f} MB before, {result['rss_end_mb']:.0f} MB "
        f"after ({result['rss_end_mb'] - result['rss_start_mb']:+.0f} MB).", "",
        "| case | expected | got | ms |", "|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['expected']} | {r['got']}{'' if r['ok'] else ' **(!)**'} "
              f"| {r['ms']:,.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        result = measure(Path(tmp))
    text = markdown(result)
    print(text)
    sections.write_section(BENCH_DIR / "RESULTS.md", "hostile", text)
    return 0 if all(r["ok"] for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
