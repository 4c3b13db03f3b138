"""The whole suite, N times in a row, on a clean clone: does it pass every time, and how long?

    python bench/test_runs.py --runs 5     # writes the test-runs section of bench/RESULTS.md

A clean clone of HEAD (committed work only) goes to a temporary directory with the project's
``../shared`` linked beside it, as CI has it; ``make install`` runs there once, then
``make test`` ``--runs`` times with ``CI=true`` (so a missing system package fails, as in CI).
Each run's verdict, duration and pytest summary line are printed as they finish.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path[:0] = [str(REPO)]

from bench import run as bench  # noqa: E402
from bench import sections  # noqa: E402

SUMMARY = re.compile(r"^=*\s*(\d+ (passed|failed).*) in ([\d.]+)s", re.M)
FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def clone(into: Path) -> Path:
    """A clean clone of HEAD, with ``shared`` beside it as on CI."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(into / "repo")], check=True)
    shared = REPO.parent / "shared"
    if shared.exists():
        (into / "shared").symlink_to(shared)
    return into / "repo"


def make_test(repo: Path, log: Path) -> dict:
    started = time.monotonic()
    with open(log, "wb") as out:
        rc = subprocess.run(["make", "test"], cwd=repo, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "CI": "true"}).returncode
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    summary = SUMMARY.findall(text)
    return {"rc": rc, "seconds": seconds, "summary": summary[-1][0] if summary else "no summary",
            "failures": [name for _, name in FAILED.findall(text)]}


def markdown(runs: list[dict], commit: str, started: str) -> str:
    machine = bench.machine_info()
    passed = sum(run["rc"] == 0 for run in runs)
    lines = ["## The suite, run again and again (`python bench/test_runs.py`)", "",
             f"- Date (UTC): {started}; commit {commit}, a clean clone; `make test` with "
             f"CI=true, {len(runs)} runs in a row",
             f"- Machine: {machine['cores']} cores ({machine['cpu_model']}), "
             f"{machine['ram_gib']} GiB RAM, Python {machine['python']}", "",
             "| run | result | duration | pytest summary |", "|---|---|---|---|"]
    for i, run in enumerate(runs, 1):
        verdict = "passed" if run["rc"] == 0 else "**FAILED** " + ", ".join(run["failures"])
        lines.append(f"| {i} | {verdict} | {run['seconds'] / 60:.1f} min | {run['summary']} |")
    lines += ["", f"{passed} of {len(runs)} runs passed"
              f"{' (target: every one) — met' if passed == len(runs) else ' — target NOT met'}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    commit = bench.git_commit().split()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="test-runs-") as tmp:
        repo = clone(Path(tmp))
        print(f"clean clone of {commit} in {repo}; make install ...", flush=True)
        subprocess.run(["make", "install"], cwd=repo, check=True, stdout=subprocess.DEVNULL)
        for i in range(1, args.runs + 1):
            run = make_test(repo, Path(tmp) / f"run-{i}.log")
            runs.append(run)
            print(f"run {i}/{args.runs}: {'passed' if run['rc'] == 0 else 'FAILED'} in "
                  f"{run['seconds'] / 60:.1f} min: {run['summary']} {run['failures'] or ''}",
                  flush=True)
            if run["rc"]:
                print((Path(tmp) / f"run-{i}.log").read_text(errors="replace")[-5000:])
    sections.write_section(args.results, "test-runs", markdown(runs, commit, started))
    return 0 if all(run["rc"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
