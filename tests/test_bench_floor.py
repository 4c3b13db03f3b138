"""bench/floor.py, the benchmark's HTTP floor: it answers the probe and the posted PNG, and
``--one-cpu`` keeps every thread on one CPU; ``--bare`` answers the same without CherryPy's
request layer."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from support import FIXTURES, REPO, free_port, wait_for

PATH = "/v1/models/digits-cnn/predict"


@pytest.fixture(params=[[], ["--one-cpu"], ["--bare"]], ids=["default", "one-cpu", "bare"])
def floor(request):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "floor.py"), "--port", str(port),
                             *request.param], cwd=REPO)
    url = f"http://127.0.0.1:{port}{PATH}"

    def answers() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False
    try:
        wait_for(answers, 30)
        yield url, proc.pid, request.param
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_floor_answers_the_probe_and_the_png(floor):
    url, _, mode = floor
    png = (FIXTURES / "digit7_28.png").read_bytes()
    assert requests.get(url, timeout=5).json()["bytes"] == 0
    response = requests.post(url, data=png, headers={"Content-Type": "image/png"}, timeout=5)
    assert response.status_code == 200 and response.json()["bytes"] == len(png)
    # CherryPy's request layer names itself in Server; the grafted callable never reaches it.
    assert response.headers["Server"].startswith("CherryPy/") == (mode != ["--bare"])


def test_one_cpu_keeps_every_thread_on_the_first_cpu(floor):
    _, pid, mode = floor
    cpus = {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}
    assert cpus == {frozenset({min(os.sched_getaffinity(0))}) if mode == ["--one-cpu"]
                    else frozenset(os.sched_getaffinity(0))}
