"""The parent of a cluster: binds the port, forks the workers and keeps them running.

The parent never imports TensorFlow, CherryPy or Prometheus, and starts no thread: each
worker is forked from a small, single-threaded process and only then loads its models
(TensorFlow's threads and sessions do not survive a fork). Then it supervises:

- a worker that exits or is killed (even ``kill -9``) is replaced at once, in the same
  slot, and counted; one that keeps dying within ``QUICK_DEATH_S`` of its start is
  replaced after a growing pause (at most ``MAX_BACKOFF_S``), so a bad config cannot spin;
- SIGTERM (or Ctrl-C) asks every worker to drain (CherryPy finishes the requests in
  flight, the input log writes what is queued) and exits 0 once all have;
- SIGHUP replaces the workers one at a time: a replacement starts, reads the config and
  loads its models, and only once it serves is its predecessor asked to drain. A
  replacement that fails to start leaves its predecessor serving.

Workers share one TCP socket bound here and inherited (the kernel queues connections for
whichever worker accepts next, so a dead worker's unaccepted connections are not lost), or
with ``socket_dir`` each binds its own Unix socket, ``worker-<slot>.sock``, for a front
such as nginx.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .board import Board
from .identity import Worker

log = logging.getLogger("service.cluster")

TICK_S = 0.05            # how often the parent looks at its children and signals
QUICK_DEATH_S = 10.0     # a worker dying sooner than this after its start is failing
MAX_BACKOFF_S = 30.0
START_TIMEOUT_S = 300.0  # a replacement that does not serve by then is given up on (SIGHUP)
PR_SET_PDEATHSIG = 1     # prctl(2), Linux


@dataclass(frozen=True)
class ClusterOptions:
    workers: int
    host: str
    port: int
    run_root: Path                # the cluster's state goes in <run_root>/<parent pid>
    socket_dir: Path | None = None
    pidfile: Path | None = None
    daemon: bool = False
    backlog: int = 128
    stop_timeout_s: float = 60.0  # a draining worker is killed after this

    def socket_path(self, slot: int) -> Path | None:
        return self.socket_dir / socket_name(slot) if self.socket_dir else None


def socket_name(slot: int) -> str:
    """The Unix socket worker ``slot`` listens on, in ``--socket-dir`` (nginx's upstream)."""
    return f"worker-{slot}.sock"


@dataclass
class Slot:
    """One worker's place: the process in it now and its history."""

    slot: int
    pid: int = 0
    generation: int = -1
    started: float = 0.0
    restarts: int = 0
    last_exit: str | None = None
    quick_deaths: int = 0
    respawn_at: float | None = None   # monotonic time of a pending replacement

    def to_dict(self) -> dict:
        return {"slot": self.slot, "pid": self.pid, "generation": self.generation,
                "started": self.started, "restarts": self.restarts, "last_exit": self.last_exit}


# What a forked child runs; it must not return (it calls os._exit).
WorkerMain = Callable[[Worker, "socket.socket | None", "Path | None"], None]


@dataclass
class Supervisor:
    options: ClusterOptions
    worker_main: WorkerMain
    slots: list[Slot] = field(default_factory=list)
    retiring: dict[int, float] = field(default_factory=dict)  # pid -> when it was asked to stop
    listener: socket.socket | None = None
    run_dir: Path | None = None
    _stop: bool = False
    _roll: bool = False

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 when every worker drained."""
        self.listener = self._listen()
        if self.options.daemon:
            daemonize()
        self.run_dir = self._prepare_run_dir(self.options.run_root / str(os.getpid()))
        self.board = Board(self.run_dir)
        if self.options.pidfile:
            self.options.pidfile.parent.mkdir(parents=True, exist_ok=True)
            self.options.pidfile.write_text(f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        where = self.options.socket_dir or f"http://{self.options.host}:{self.options.port}"
        log.info("cluster parent %d: %d workers on %s", os.getpid(), self.options.workers,
                 where)
        self.slots = [Slot(n) for n in range(self.options.workers)]
        for slot in self.slots:
            self._spawn(slot)
        try:
            while not self._stop:
                self._tick()
                if self._roll:
                    self._roll = False
                    self._replace_all()
            return self._shutdown()
        finally:
            self._cleanup()

    # -- signals (set flags; the loop acts) ---------------------------------------------------
    def _on_stop(self, signum: int, _frame) -> None:
        self._stop = True

    def _on_hup(self, signum: int, _frame) -> None:
        self._roll = True

    # -- the loop ------------------------------------------------------------------------------
    def _tick(self) -> None:
        self._reap()
        now = time.monotonic()
        for slot in self.slots:
            if slot.respawn_at is not None and now >= slot.respawn_at and not self._stop:
                self._spawn(slot)
        self._kill_overdue()
        time.sleep(TICK_S)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.retiring.pop(pid, None) is not None:
                continue  # a drained predecessor, or a replacement given up on
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._died(slot, describe_exit(status))

    def _died(self, slot: Slot, how: str) -> None:
        lived = time.time() - slot.started
        slot.pid, slot.last_exit = 0, how
        if self._stop:
            return
        slot.restarts += 1
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        pause = min(MAX_BACKOFF_S, 0.5 * 2 ** (slot.quick_deaths - 1)) if slot.quick_deaths else 0
        slot.respawn_at = time.monotonic() + pause
        log.error("worker %d.%d %s after %.1f s; replacing it%s", slot.slot, slot.generation,
                  how, lived, f" in {pause:g} s" if pause else "")
        self._publish()

    def _spawn(self, slot: Slot) -> int:
        slot.generation += 1
        slot.respawn_at = None
        worker = Worker(slot.slot, self.options.workers, self.run_dir, slot.generation)
        pid = self._fork(worker)
        slot.pid, slot.started = pid, time.time()
        self._publish()
        return pid

    def _fork(self, worker: Worker) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                die_with_parent(parent)
                self.worker_main(worker, self.listener, self.options.socket_path(worker.slot))
            finally:
                os._exit(70)  # EX_SOFTWARE: worker_main returned or raised
        return pid

    # -- SIGHUP: one slot at a time -------------------------------------------------------------
    def _replace_all(self) -> None:
        log.info("SIGHUP: replacing %d workers one at a time", len(self.slots))
        self.board.clear_reloads()  # replacements follow the (re-read) config
        for slot in self.slots:
            if self._stop:
                return
            if not self._replace(slot):
                log.error("replacing worker %d failed; the remaining workers keep serving",
                          slot.slot)
                return
        log.info("SIGHUP: every worker replaced")

    def _replace(self, slot: Slot) -> bool:
        old_pid, old_generation = slot.pid, slot.generation
        new_pid = self._spawn(slot)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._serving(slot):
            self._reap()
            if slot.pid != new_pid or self._stop or time.monotonic() > deadline:
                if slot.pid == new_pid:  # alive but too slow, or stopping: give it up
                    self._retire(new_pid)
                # back to the predecessor, still serving (or already replaced on death)
                if old_pid and _alive(old_pid):
                    slot.pid, slot.generation = old_pid, old_generation
                    slot.respawn_at = None
                self._publish()
                return False
            time.sleep(TICK_S)
        if old_pid:
            self._retire(old_pid)
            while old_pid in self.retiring and not self._stop:
                self._tick()  # keeps replacing others that die meanwhile
        return True

    def _serving(self, slot: Slot) -> bool:
        entry = self.board.entry(slot.slot, slot.generation)
        return entry is not None and entry.get("pid") == slot.pid and entry.get("state") == "serving"

    def _retire(self, pid: int) -> None:
        self.retiring[pid] = time.monotonic()
        _signal(pid, signal.SIGTERM)

    def _kill_overdue(self) -> None:
        limit = time.monotonic() - self.options.stop_timeout_s
        for pid, asked in list(self.retiring.items()):
            if asked < limit:
                log.error("worker %d did not drain within %g s; killing it", pid,
                          self.options.stop_timeout_s)
                _signal(pid, signal.SIGKILL)
                self.retiring[pid] = float("inf")  # killed; only reaping remains

    # -- stopping -------------------------------------------------------------------------------
    def _shutdown(self) -> int:
        log.info("cluster parent %d: stopping %d workers", os.getpid(), len(self.slots))
        for slot in self.slots:
            if slot.pid:
                self._retire(slot.pid)
                slot.pid = 0
        deadline = time.monotonic() + self.options.stop_timeout_s + 5
        while self.retiring and time.monotonic() < deadline:
            self._tick()
        for pid in list(self.retiring):
            _signal(pid, signal.SIGKILL)
        self._reap()
        log.info("cluster parent %d: stopped", os.getpid())
        return 0

    def _cleanup(self) -> None:
        if self.options.pidfile:
            self.options.pidfile.unlink(missing_ok=True)
        if self.listener is not None:
            self.listener.close()
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- plumbing -------------------------------------------------------------------------------
    def _listen(self) -> socket.socket | None:
        """The shared TCP socket, bound before any fork; None with per-worker Unix sockets."""
        if self.options.socket_dir is not None:
            self.options.socket_dir.mkdir(parents=True, exist_ok=True)
            return None
        sock = socket.create_server((self.options.host, self.options.port),
                                    family=_family(self.options.host),
                                    backlog=self.options.backlog)
        # As cheroot does for a socket it binds: accepted connections inherit TCP_NODELAY, so
        # an answer's last segment is not held back waiting for the client's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.set_inheritable(True)
        return sock

    @staticmethod
    def _prepare_run_dir(run_dir: Path) -> Path:
        shutil.rmtree(run_dir, ignore_errors=True)  # a previous cluster's (same pid) leftovers
        (run_dir / "metrics").mkdir(parents=True)
        return run_dir

    def _publish(self) -> None:
        self.board.publish_parent({"pid": os.getpid(), "workers": self.options.workers,
                                   "slots": [s.to_dict() for s in self.slots]})


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def daemonize() -> None:
    """Detach: fork twice, new session, stdio to /dev/null (the log goes where configured)."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def die_with_parent(parent: int) -> None:
    """SIGTERM this (forked) process when ``parent`` dies, even by SIGKILL: no orphans."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: children only call it


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
