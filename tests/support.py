"""Shared test helpers: repo paths, waiting on a condition, real servers on loopback ports."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

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


class S3Server:
    """moto's standalone S3-compatible server on a loopback port (a real HTTP endpoint)."""

    CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "S3Server":
        moto = Path(sys.executable).parent / "moto_server"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.CREDENTIALS})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                requests.get(self.endpoint_url, timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"moto_server did not start: {self.log_path.read_text()}")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def config_section(self) -> str:
        """The [s3] section a server config needs to reach this endpoint."""
        return (f'[s3]\nendpoint_url = "{self.endpoint_url}"\nregion = "us-east-1"\n'
                'access_key_id = "testing"\nsecret_access_key = "testing"\n')

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def require_redis_server() -> str:
    """The redis-server binary. Missing: the test fails under CI (CI=true; .ci/run installs
    the Debian package), and is skipped elsewhere."""
    import pytest

    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class RedisServer:
    """A real redis-server on a free loopback port, in memory only (no snapshot, no AOF): a
    restart loses every key and script, as a crashed Redis would."""

    def __init__(self, directory: Path):
        self.binary = require_redis_server()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = directory / "redis.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "RedisServer":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir)],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or self.ping(), timeout,
                 what=lambda: f"redis-server on port {self.port}:\n{self.log()}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def ping(self) -> bool:
        try:
            return self.client().ping()
        except Exception:  # not listening yet
            return False

    def client(self):
        """A client of its own (the tests' view of the keys; not the limiter's)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        """Stop it (SIGKILL: as if it crashed) and wait until its port is closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        wait_for(lambda: not listening(self.port), 10, what=f"port {self.port} closed")

    def restart(self) -> "RedisServer":
        """Stop it and start a fresh, empty one on the same port."""
        self.stop()
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP: it still accepts connections (the kernel does) but never answers -- a hung
        Redis."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
