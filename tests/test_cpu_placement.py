"""Where a serving process's threads run: the plan, and a real server's threads (/proc)."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import requests

from service import cpu_placement
from service.config import PoolSettings
from service.cpu_placement import Placement, plan, share
from support import FIXTURES, ServerProcess

PNG7 = (FIXTURES / "digit7_28.png").read_bytes()
ONLY_CNN = '[service]\nmodels = ["digits-cnn"]\n'
CPUS = sorted(os.sched_getaffinity(0))


def test_a_lone_process_keeps_its_interpreter_on_one_cpu_of_its_own():
    assert plan({0, 1}) == Placement(0, frozenset({0, 1}))
    assert plan({7, 2, 5}) == Placement(2, frozenset({2, 5, 7}))


def test_one_process_on_one_cpu_has_nothing_to_place():
    assert plan({3}) is None


def test_workers_split_the_cpus_and_a_one_cpu_share_holds_the_whole_worker():
    assert [plan({0, 1}, slot, 2) for slot in (0, 1)] == [Placement(0, frozenset({0})),
                                                           Placement(1, frozenset({1}))]
    assert plan(range(8), 1, 2) == Placement(4, frozenset({4, 5, 6, 7}))


def test_shares_cover_every_cpu_once_and_extra_processes_wrap_around():
    cpus = list(range(7))
    assert sorted(c for slot in range(3) for c in share(cpus, slot, 3)) == cpus
    assert [share([0, 1], slot, 3) for slot in range(3)] == [[0], [1], [0]]


def test_unplaced_sessions_size_to_the_cpus_the_process_may_use():
    assert PoolSettings().threads_per_session() == len(CPUS)  # nothing applied in this process


def cgroup_tree(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc/self/cgroup line and a /sys/fs/cgroup tree holding ``files``."""
    proc = tmp_path / "cgroup"
    proc.write_text(proc_line + "\n")
    for name, text in files.items():
        (tmp_path / "sys" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / name).write_text(text + "\n")
    return proc, tmp_path / "sys"


@pytest.mark.parametrize("proc_line, files, cpus, shared", [
    ("0::/kubepods/pod1", {"kubepods/pod1/cpu.max": "200000 100000"}, 8, 2.0),
    ("0::/kubepods/pod1", {"kubepods/pod1/cpu.max": "max 100000"}, 8, None),
    ("0::/", {"cpu.max": "400000 100000"}, 4, None),  # a quota of all its CPUs: not shared
    ("4:cpu,cpuacct:/docker/abc", {"cpu/cpu.cfs_quota_us": "150000",  # namespaced: the root
                                   "cpu/cpu.cfs_period_us": "100000"}, 4, 1.5),
    ("1:cpu:/", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 2, None),
    ("0::/", {}, 2, None),  # no cpu controller to read: the CPUs are taken as its own
], ids=["v2-limit", "v2-max", "v2-all", "v1-limit", "v1-none", "unreadable"])
def test_a_cpu_quota_below_the_cpus_means_they_are_shared(tmp_path, proc_line, files, cpus,
                                                          shared):
    proc, cgroups = cgroup_tree(tmp_path, proc_line, files)
    assert cpu_placement.shared_cpus(cpus, proc, cgroups) == shared


def threads(pid: int) -> list[tuple[int, frozenset[int]]]:
    """Each thread of ``pid``: its nice value and the CPUs it may run on."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            nice = int(Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1]
                       .split()[16])
            found.append((nice, frozenset(os.sched_getaffinity(int(tid)))))
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return found


def predict_batch(url: str, count: int) -> None:
    """A request big enough for the preprocessing pool (more than one run of images)."""
    body = {"instances": [{"b64": base64.b64encode(PNG7).decode()}] * count}
    response = requests.post(url + "/v1/models/digits-cnn/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("placed"), ONLY_CNN).start()
    predict_batch(proc.url, 64)
    yield proc
    proc.stop()


def test_a_server_keeps_interpreter_threads_on_one_cpu_and_sessions_on_all(server):
    found = threads(server.proc.pid)
    sessions = {cpus for nice, cpus in found if nice == 10}  # compute_nice: session threads
    interpreter = [cpus for nice, cpus in found if nice == 0]
    assert sessions == {frozenset(CPUS)}
    assert interpreter.count(frozenset(CPUS[:1])) >= 16  # request threads, writers, main
    if len(CPUS) > 1:
        assert f"interpreter threads on CPU {CPUS[0]}," in server.log()


def test_the_preprocessing_pool_may_use_every_cpu(server):
    assert frozenset(CPUS) in {cpus for nice, cpus in threads(server.proc.pid) if nice == 0}


def test_pin_cpus_false_leaves_every_thread_on_every_cpu(tmp_path):
    proc = ServerProcess(tmp_path, ONLY_CNN + "pin_cpus = False\n").start()
    try:
        predict_batch(proc.url, 1)
        assert {cpus for _, cpus in threads(proc.proc.pid)} == {frozenset(CPUS)}
        assert "interpreter threads on CPU" not in proc.log()
    finally:
        proc.stop()
