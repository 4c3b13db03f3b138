"""Which CPUs a serving process's threads run on (``[service] pin_cpus``).

CPython runs one thread at a time, and when the interpreter lock passes between threads on
different cores, each hand-off costs a cross-core wake-up and the cache lines the next
thread needs: on the 2-core benchmark machine, CherryPy's trivial route answers 17 % more
requests a second with all its threads on one core, and the service 18 % more
(bench/NOTES.md). So a process keeps its interpreter threads together on one of its CPUs,
while the threads whose work is mostly outside the lock -- each model session's worker and
the threads TensorFlow starts from it (nicer than the request threads: compute_nice), and
the preprocessing pool of big requests -- may use all of them: a big batch still has every
core, and single images lose nothing by it (measured alike).

Cluster workers first split the process's CPUs into one share each; a share of one CPU holds
the whole worker, its sessions included (measured: better than a worker's sessions on the
other worker's CPU). A process only divides the CPUs it was given (taskset, a container's
cpuset, the cluster's shares): standalone processes sharing a machine should each be given
their own, or run with ``pin_cpus = False``. A container whose CPU quota is smaller than the
CPUs it may run on shares them with others (a Kubernetes pod with a CPU limit but no
exclusive cpuset): pinning there would put every such pod's interpreter on the node's first
CPU, so it is left to the kernel (``shared_cpus``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger("service.cpu")


@dataclass(frozen=True)
class Placement:
    """One process's CPUs (``share``), and the one its interpreter threads keep to."""

    interpreter: int
    share: frozenset[int]


def plan(cpus: Iterable[int], slot: int = 0, workers: int = 1) -> Placement | None:
    """The placement of cluster worker ``slot`` of ``workers`` (a lone process: 0 of 1) on
    ``cpus``; None when there is nothing to place (one process on one CPU)."""
    mine = share(sorted(cpus), slot, workers)
    if workers == 1 and len(mine) < 2:
        return None
    return Placement(mine[0], frozenset(mine))


def plan_here(slot: int = 0, workers: int = 1) -> Placement | None:
    """``plan`` on the CPUs this process may run on -- None if a CPU quota says others share
    them."""
    cpus = available_cpus()
    quota = shared_cpus(len(cpus))
    if quota is not None:
        log.info("CPU placement off: the CPU quota (%.2f CPUs) is less than the %d CPUs this "
                 "process may run on, which others share (a cpuset of its own would allow it)",
                 quota, len(cpus))
        return None
    return plan(cpus, slot, workers)


def share(cpus: list[int], slot: int, count: int) -> list[int]:
    """Process ``slot`` of ``count``'s contiguous share of ``cpus`` (sorted); with more
    processes than CPUs, one CPU."""
    if count > len(cpus):
        return [cpus[slot % len(cpus)]]
    return cpus[slot * len(cpus) // count:(slot + 1) * len(cpus) // count]


_applied: Placement | None = None  # the process's placement, once apply() made it


def apply(placement: Placement) -> None:
    """Move every thread the process has now -- and so every thread they start -- onto the
    interpreter's CPU. Call before the session workers start: each moves itself back out
    (``leave_interpreter_cpu``)."""
    global _applied
    for tid in _thread_ids():
        _pin(tid, frozenset({placement.interpreter}))
    _applied = placement
    log.info("CPU placement: interpreter threads on CPU %d, model sessions on CPU %s",
             placement.interpreter, ",".join(str(c) for c in sorted(placement.share)))


def leave_interpreter_cpu() -> None:
    """The calling thread, and the threads it starts from now on, onto all of the process's
    CPUs: for threads that work mostly outside the interpreter lock."""
    if _applied is not None:
        _pin(0, _applied.share)


def shared_cpus(cpus: int, proc: Path = Path("/proc/self/cgroup"),
                cgroups: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The process's CPU quota in CPUs when it is smaller than the ``cpus`` it may run on
    (they are shared with others), else None: cgroup v2's ``cpu.max``, or v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    quota = _cgroup_quota(proc, cgroups)
    return quota if quota is not None and quota < cpus else None


def _cgroup_quota(proc: Path, cgroups: Path) -> float | None:
    """The quota of the first cpu controller found in ``proc``'s cgroups; None: unlimited."""
    for controllers, relative in _cgroups(proc):
        if controllers == "":
            base, quota_of = cgroups, _v2_quota
        elif "cpu" in controllers.split(","):
            base, quota_of = cgroups / "cpu", _v1_quota
        else:
            continue
        for where in (base / relative, base):  # in a container, its own cgroup is the root
            try:
                return quota_of(where)
            except ValueError:  # no such file here (or not a quota): look further
                continue
    return None


def _cgroups(proc: Path) -> list[tuple[str, str]]:
    """(controllers, path relative to the hierarchy) per line of /proc/<pid>/cgroup."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return []
    return [(parts[1], parts[2].lstrip("/")) for parts in (l.split(":", 2) for l in lines)
            if len(parts) == 3]


def _v2_quota(where: Path) -> float | None:
    quota, period = _read(where / "cpu.max").split()  # "max 100000" or "200000 100000"
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(where: Path) -> float | None:
    quota, period = int(_read(where / "cpu.cfs_quota_us")), int(_read(where / "cpu.cfs_period_us"))
    return None if quota < 0 else quota / period  # -1: none


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def available_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask: taskset, a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread only
        return [0]


def _pin(tid: int, cpus: frozenset[int]) -> None:
    if not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(tid, cpus)  # on Linux, a thread id moves that thread alone
    except OSError as exc:  # a thread that just ended, or a sandbox that forbids it
        log.debug("thread %d keeps its CPUs: %s", tid, exc)
