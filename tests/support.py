"""Shared test helpers: repo paths, waiting on a condition, real servers on loopback ports."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from service.replicas.servers import ServerMissing

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.01,
             what: str | Callable[[], str] = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    For waiting on a state the test can observe, never on a guess of how long something
    takes: ``timeout`` is only a ceiling against a hang, so keep it generous. Once it has
    passed, fails the test (AssertionError) with ``what`` (called then, if callable).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what() if callable(what) else what} "
                                 f"not met within {timeout:g} s")
        time.sleep(interval)


ESTABLISHED, CLOSE_WAIT, LISTEN = "01", "08", "0A"  # TCP states as /proc/net/tcp has them


@dataclass(frozen=True)
class TcpEnd:
    """One end of a TCP connection on this host, as the kernel sees it."""

    state: str
    unacked: int  # bytes written but not yet acknowledged by the peer (tx_queue)
    unread: int   # bytes received but not yet read by the process (rx_queue)


def tcp_ends() -> dict[tuple[int, int], TcpEnd]:
    """This host's TCP connection ends by (local port, remote port), from /proc/net/tcp{,6}."""
    ends = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            _, local, remote, state, queues, *_ = row.split()
            unacked, unread = (int(n, 16) for n in queues.split(":"))
            ports = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
            ends[ports] = TcpEnd(state, unacked, unread)
    return ends


def read_by_server(server_port: int, client_port: int, ends: dict | None = None) -> bool:
    """All a loopback client sent so far has reached the server and been read by it: a
    state to wait for where a test would otherwise sleep and hope."""
    ends = tcp_ends() if ends is None else ends
    client, server = ends.get((client_port, server_port)), ends.get((server_port, client_port))
    return (client is not None and server is not None
            and client.state == server.state == ESTABLISHED
            and client.unacked == 0 and server.unread == 0)


def listening(port: int) -> bool:
    """A socket on this host listens on ``port``."""
    return any(end.state == LISTEN for (local, _), end in tcp_ends().items() if local == port)


def closed_by_server(server_port: int, client_ports: list[int]) -> bool:
    """The server has closed its end of each of these loopback connections."""
    ends = tcp_ends()
    return not any(ends.get((server_port, port), TcpEnd("", 0, 0)).state
                   in (ESTABLISHED, CLOSE_WAIT) for port in client_ports)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m service serve`` in a subprocess, with its own config file and port."""

    def __init__(self, tmp: Path, config: str = "", extra_args: tuple[str, ...] = (),
                 ready_headers: dict[str, str] | None = None):
        self.ready_headers = ready_headers or {}  # e.g. a key, when health routes need one
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp / "service.conf"
        if "[inputlog]" not in config:  # keep test predictions out of the repo's var/inputlog
            config += f'\n[inputlog]\ndir = "{tmp / "inputlog"}"\n'
        self.config_path.write_text(config)
        self.log_path = tmp / "server.log"
        self.args = [sys.executable, "-m", "service", "serve", "--config", str(self.config_path),
                     "--port", str(self.port), *extra_args]
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 120) -> "ServerProcess":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         env=env)
        try:
            self.wait_for("/readyz" if wait_ready else "/healthz", timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_for(self, path: str, timeout: float) -> None:
        """Poll ``path`` until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + path, headers=self.ready_headers,
                                timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet -- or, with workers, no worker accepting yet
            time.sleep(0.1)
        raise RuntimeError(f"{path} did not answer 200 within {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def require_nginx() -> str:
    """The nginx binary. Missing: the test fails under CI (CI=true; .ci/run installs the
    Debian package), and is skipped elsewhere."""
    import pytest

    from service.cluster.front import find_nginx

    binary = find_nginx()
    if binary is None:
        message = "nginx is not installed (apt-get install nginx; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class ClusterProcess(ServerProcess):
    """``python -m service cluster`` (what ``make cluster`` runs) in a subprocess: ``workers``
    workers behind nginx on a loopback port, nginx's files and the sockets under ``tmp``."""

    def __init__(self, tmp: Path, config: str = "", workers: int = 2):
        if "run_dir" not in config:  # the cluster's shared state, out of the repo's var/
            section = f'[service]\nrun_dir = "{tmp / "run"}"\n'
            config = (config.replace("[service]\n", section, 1) if "[service]\n" in config
                      else section + config)
        super().__init__(tmp, config)
        self.prefix = tmp / "front"
        self.workers = workers
        self.args = [sys.executable, "-m", "service", "cluster", "--config",
                     str(self.config_path), "--port", str(self.port), "--workers", str(workers),
                     "--prefix", str(self.prefix)]

    def pid(self, name: str) -> int | None:
        """A pid file's process under the prefix: "nginx" or "service" (the parent)."""
        try:
            return int((self.prefix / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def require_server(cls: type, *args, **kwargs):
    """A backing server of service/replicas/servers.py (not started). Its binary missing: the
    test fails under CI (CI=true; .ci/run installs the Debian package), and is skipped
    elsewhere."""
    import pytest

    try:
        return cls(*args, **kwargs)
    except ServerMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def metric_sum(url: str, name: str) -> float:
    """The sum of every sample of ``name`` (any labels) in ``url``/metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)
