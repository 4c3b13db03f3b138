"""``serve --workers 2``: two real worker processes behind one port, and their parent.

The tests share one cluster and run in file order: the last ones replace, kill and stop
its workers.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from model_versions import NAME, build_version
from service.access.keys import add_key
from service.cpu_placement import share
from support import REPO, ServerProcess, free_port, wait_for
from traffic import IMAGE, PNG, Traffic, inputlog_request_ids

RATE = 5.0  # requests a second of the limited key


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    graphs = tmp / "graphs"
    for version in (1, 2):
        build_version(graphs, version)
    keys = tmp / "keys.json"
    _, admin = add_key(keys, "ops", True, {})
    _, user = add_key(keys, "app", False, {})
    _, limited = add_key(keys, "limited", False, {"requests_per_s": RATE,
                                                  "requests_burst": RATE})
    proc = ServerProcess(tmp, f"""
[service]
models = ["{NAME}"]
graphs_dir = "{graphs}"
run_dir = "{tmp / 'run'}"
[model:{NAME}]
version = 1
[auth]
keys_file = "{keys}"
[ratelimit]
tarpit_s = 0.0
[store]
poll_interval_s = 0.0
""", extra_args=("--workers", "2"), ready_headers=bearer(user))
    proc.start()
    proc.keys, proc.admin, proc.user, proc.limited = keys, admin, user, limited
    proc.inputlog = tmp / "inputlog"
    yield proc
    proc.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def status(cluster) -> dict:
    """``/status``, retried once on a connection failure, as every client here does (the
    tests below kill and replace workers under it)."""
    try:
        response = requests.get(cluster.url + "/status", timeout=10)
    except requests.ConnectionError:
        response = requests.get(cluster.url + "/status", timeout=10)
    assert response.status_code == 200
    return response.json()


def workers(cluster) -> list[dict]:
    return status(cluster)["workers"]


def predict(cluster, key: str | None = None) -> requests.Response:
    """One prediction on a new connection (so either worker may take it)."""
    return requests.post(f"{cluster.url}/v1/models/{NAME}/predict", data=IMAGE,
                         headers={**PNG, **bearer(key or cluster.user), "Connection": "close"},
                         timeout=30)


def answers_from_both(cluster, key: str | None = None, limit: int = 400) -> dict[str, list]:
    """Predict until both workers have answered; their answers by ``X-Served-By``."""
    seen: dict[str, list] = {}
    for _ in range(limit):
        response = predict(cluster, key)
        seen.setdefault(response.headers["X-Served-By"], []).append(response)
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only {sorted(seen)} answered {limit} requests")


def maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as handle:
        return handle.read()


def test_the_parent_never_imports_tensorflow(cluster):
    pids = [w["pid"] for w in workers(cluster)]
    assert len(pids) == 2 and cluster.proc.pid not in pids
    assert all("tensorflow" in maps(pid) for pid in pids)  # each worker loaded it itself
    assert "tensorflow" not in maps(cluster.proc.pid)


def test_each_worker_runs_on_its_own_share_of_the_cpus(cluster):
    cpus = sorted(os.sched_getaffinity(0))
    for slot, worker in enumerate(sorted(workers(cluster), key=lambda w: w["name"])):
        mine = set(share(cpus, slot, 2))  # with 2 CPUs, one each: the sessions' threads too
        tids = os.listdir(f"/proc/{worker['pid']}/task")
        found = [os.sched_getaffinity(int(tid)) for tid in tids]
        assert set().union(*found) == mine
        assert len(cpus) != 2 or all(cpus_ == mine for cpus_ in found)


def test_both_workers_answer_and_say_so(cluster):
    seen = answers_from_both(cluster)
    assert sorted(seen) == ["worker-0.0", "worker-1.0"]
    for responses in seen.values():
        assert all(r.status_code == 200 and r.json()["predictions"][0]["class"] == 7
                   for r in responses)


def test_status_lists_every_worker_and_readyz_needs_all(cluster):
    answer = status(cluster)
    assert answer["status"] == "ok" and answer["worker"] in ("worker-0.0", "worker-1.0")
    assert [(w["name"], w["state"], w["ready"], w["restarts"]) for w in answer["workers"]] == [
        ("worker-0.0", "serving", True, 0), ("worker-1.0", "serving", True, 0)]
    assert all(w["models"][NAME] == {"state": "AVAILABLE", "version": 1}
               for w in answer["workers"])
    assert requests.get(cluster.url + "/readyz", timeout=10).status_code == 200


def metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def test_metrics_sum_every_worker(cluster):
    series = ('digits_http_requests_total{method="POST",protocol="native",'
              'route="/v1/models/{name}/predict",status="200"}')
    before = metric(requests.get(cluster.url + "/metrics", timeout=10).text, series)
    seen = answers_from_both(cluster)
    made = sum(len(r) for r in seen.values())
    text = requests.get(cluster.url + "/metrics", timeout=10).text
    assert metric(text, series) - before == made  # whichever worker answers the scrape
    # scrape-time gauges: one series per worker (posted about once a second)
    wait_for(lambda: all(f'digits_model_state{{model="{NAME}",state="AVAILABLE",worker='
                         f'"worker-{n}"}} 1.0' in requests.get(cluster.url + "/metrics").text
                         for n in (0, 1)), timeout=10)


def test_records_of_both_workers_land_in_the_input_log(cluster):
    """8 clients over both workers: every answered request's record lands, none is dropped
    (N processes write one SQLite file: no 'database is locked')."""
    with Traffic(cluster.url, clients=8, headers=bearer(cluster.user)) as traffic:
        traffic.wait_answers(300)
    assert traffic.failures == [] and len(traffic.served_by) == 2, traffic.served_by
    ids = set(traffic.request_ids)
    wait_for(lambda: ids <= inputlog_request_ids(cluster.inputlog), timeout=30)
    text = requests.get(cluster.url + "/metrics", timeout=10).text
    assert metric(text, "digits_inputlog_dropped_total") == 0


def test_feedback_reaches_a_prediction_made_by_the_other_worker(cluster):
    seen = answers_from_both(cluster)
    for maker, responses in seen.items():
        request_id = responses[-1].json()["request_id"]
        for _ in range(200):  # until the other worker takes the feedback
            answer = requests.post(cluster.url + "/v1/feedback",
                                   json={"request_id": request_id, "label": "7"},
                                   headers={**bearer(cluster.user), "Connection": "close"},
                                   timeout=30)
            if answer.headers["X-Served-By"] != maker:
                break
        assert answer.headers["X-Served-By"] != maker
        assert answer.status_code == 200, answer.text
        assert answer.json()["updated"] == 1
    with sqlite3.connect(cluster.inputlog / "inputlog.sqlite3") as conn:
        labelled = conn.execute("SELECT COUNT(*) FROM predictions WHERE feedback_label = '7'")
        assert labelled.fetchone()[0] >= 2


def test_a_key_limit_holds_across_workers(cluster):
    """5 requests/s (burst 5) for one key: 5 ± 1 per second over both workers, not 10."""
    admitted: dict[str, int] = {}
    refused = 0
    started = time.monotonic()
    while time.monotonic() - started < 4.0:
        response = predict(cluster, cluster.limited)
        if response.status_code == 200:
            by = response.headers["X-Served-By"]
            admitted[by] = admitted.get(by, 0) + 1
        else:
            assert response.status_code == 429, response.text
            refused += 1
    elapsed = time.monotonic() - started
    per_second = (sum(admitted.values()) - RATE) / elapsed  # beyond the initial burst
    assert RATE - 1 <= per_second <= RATE + 1, (admitted, refused, elapsed)
    assert len(admitted) == 2 and refused > 0  # both workers admitted from the one bucket


def test_a_key_added_while_running_reaches_every_worker(cluster):
    _, key = add_key(cluster.keys, "late", False, {})
    seen: set[str] = set()

    def accepted_by_both() -> bool:
        response = predict(cluster, key)
        if response.status_code == 200:
            seen.add(response.headers["X-Served-By"])
        return len(seen) == 2

    wait_for(accepted_by_both, timeout=20, interval=0.05)


def test_a_reload_moves_every_worker_and_fails_no_request(cluster):
    with Traffic(cluster.url, clients=4, headers=bearer(cluster.user)) as traffic:
        traffic.wait_answers(20)
        response = requests.post(f"{cluster.url}/v1/models/{NAME}/reload", json={"version": 2},
                                 headers=bearer(cluster.admin), timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["workers"] == {"worker-0.0": 2, "worker-1.0": 2}
        before = traffic.versions[2]
        traffic.wait_answers(20)
    assert traffic.failures == []
    assert traffic.versions[2] - before >= 20
    assert {r.json()["version"] for rs in answers_from_both(cluster).values() for r in rs} == {2}


def test_kill_9_of_a_worker_under_load_fails_no_request(cluster):
    victim = workers(cluster)[0]
    with Traffic(cluster.url, clients=8, headers=bearer(cluster.user), pause_s=0.01) as traffic:
        traffic.wait_answers(40)
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        # not ready while the replacement loads TensorFlow and its models (seconds)
        wait_for(lambda: requests.get(cluster.url + "/readyz", timeout=10).status_code == 503,
                 timeout=5)
        wait_for(lambda: workers(cluster)[0]["ready"] and workers(cluster)[0]["pid"] != victim["pid"],
                 timeout=60, interval=0.1)
        back_after = time.monotonic() - killed
        traffic.wait_answers(40)
    assert traffic.failures == []
    # seconds of TensorFlow import and model warm-up; 11 s seen on a slow CI day
    assert back_after < 20, f"the replacement took {back_after:.1f} s"
    replaced = workers(cluster)[0]
    assert (replaced["name"], replaced["restarts"], replaced["last_exit"]) == (
        "worker-0.1", 1, "was killed by SIGKILL")
    assert "worker-0.1" in answers_from_both(cluster)
    # the replacement caught up with the reload posted earlier before it took a request:
    # it serves version 2, like its sibling, and no answer came from version 1
    assert replaced["models"][NAME]["version"] == 2
    assert set(traffic.versions) == {2}


def test_sighup_replaces_every_worker_without_a_failed_request(cluster):
    before = {w["name"] for w in workers(cluster)}
    with Traffic(cluster.url, clients=8, headers=bearer(cluster.user), pause_s=0.01) as traffic:
        traffic.wait_answers(40)
        cluster.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: all(w["ready"] and w["name"] not in before for w in workers(cluster)),
                 timeout=120, interval=0.2)
        traffic.wait_answers(40)
    assert traffic.failures == []
    after = workers(cluster)
    assert [w["name"] for w in after] == ["worker-0.2", "worker-1.1"]
    # a SIGHUP starts from the config again: the config pins version 1
    assert all(w["models"][NAME]["version"] == 1 for w in after)


def test_sigterm_drains_and_exits_0_leaving_no_process(cluster):
    pids = [w["pid"] for w in workers(cluster)]
    assert cluster.stop(timeout=90) == 0
    for pid in pids:
        assert gone(pid), f"worker {pid} outlived its parent"


def test_daemon_mode_keeps_the_parent_in_the_pidfile(tmp_path):
    port, pidfile = free_port(), tmp_path / "service.pid"
    config = tmp_path / "service.conf"
    config.write_text(f'[service]\nmodels = ["{NAME}"]\nrun_dir = "{tmp_path}"\n'
                      f'[inputlog]\ndir = "{tmp_path / "inputlog"}"\n'
                      f'[logging]\nfile = "{tmp_path / "service.log"}"\n')
    launcher = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(config), "--port", str(port),
         "--workers", "2", "--daemon", "--pidfile", str(pidfile)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert launcher.returncode == 0, launcher.stderr  # the launcher returns once detached
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url), 120, interval=0.2,
                 what=lambda: (tmp_path / "service.log").read_text())
        parent = int(pidfile.read_text())
        assert os.getsid(parent) != os.getsid(0)  # detached into its own session
        children = subprocess.run(["ps", "--ppid", str(parent), "-o", "pid="],
                                  capture_output=True, text=True).stdout.split()
        listed = requests.get(url + "/status", timeout=10).json()["workers"]
        assert sorted(w["pid"] for w in listed) == sorted(map(int, children))
        assert len(children) == 2
        # each worker logs to a file of its own beside the parent's (rotation is per process)
        assert {"service.log", "service.worker-0.log", "service.worker-1.log"} <= \
            {f.name for f in tmp_path.iterdir()}
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 90, interval=0.2)
    assert all(gone(int(pid)) for pid in children)


def ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its (init) parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_do_not_outlive_a_killed_parent(tmp_path):
    proc = ServerProcess(tmp_path, f'[service]\nmodels = ["{NAME}"]\nrun_dir = "{tmp_path}"\n',
                         extra_args=("--workers", "2")).start()
    pids = [w["pid"] for w in workers(proc)]
    proc.kill()  # SIGKILL: the parent cannot stop them itself
    wait_for(lambda: all(gone(pid) for pid in pids), timeout=60)
