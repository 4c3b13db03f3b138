"""Throwaway backing servers on loopback: PostgreSQL, Redis and an S3-compatible endpoint.

What ``make replicas`` runs the replicas on, and what the tests start: the real servers (the
Debian ``postgresql`` and ``redis-server`` packages, moto's S3 server from the virtualenv),
each on a free port with its data in a directory of its own, which ``cleanup()`` deletes
(``stop()`` keeps it: a stopped server starts again with its data, as after an outage).
"""
from __future__ import annotations

import functools
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..cluster.supervisor import die_with_parent

START_TIMEOUT_S = 60.0


class ServerMissing(RuntimeError):
    """A server's binary is not installed (the message says which package has it)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready, proc: subprocess.Popen, what: str, log_path: Path,
          timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start: {log_path.read_text(errors='replace')[-2000:]}")


class BackingServer:
    """A server process with a throwaway directory; ``start()``/``stop()``, restartable."""

    name = "server"

    def __init__(self, root: Path | None = None, port: int | None = None):
        self.port = port or free_port()
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix=f"digits-{self.name}-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return _port_open(self.port)

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def identity(self) -> dict[str, int]:
        """Popen's ``user`` and ``group``, for a server that must not run as root."""
        return {}

    def start(self) -> "BackingServer":
        self.prepare()
        with open(self.log_path, "ab") as log:
            # Its own session (a terminal's Ctrl-C is for whoever started it), and gone with
            # the process that started it, even by kill -9.
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env(), start_new_session=True,
                                         preexec_fn=functools.partial(die_with_parent,
                                                                      os.getpid()),
                                         **self.identity())
        _wait(self.ready, self.proc, self.name, self.log_path)
        return self

    def prepare(self) -> None:
        """Anything to do once before the first start (e.g. initdb)."""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process and wait until its port is closed (its data stays until
        :meth:`cleanup`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + timeout
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def restart(self) -> "BackingServer":
        self.stop()
        return self.start()

    stop_signal = signal.SIGTERM

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "BackingServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


# -- PostgreSQL ---------------------------------------------------------------------------------
def find_postgres_bin() -> Path:
    """The directory of ``initdb`` and ``postgres`` (Debian keeps them out of PATH)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[3]) if Path(p).parts[3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    raise ServerMissing("PostgreSQL is not installed (apt-get install postgresql)")


class PostgresServer(BackingServer):
    """A throwaway cluster: ``initdb`` into its directory, then ``postgres`` on loopback only.

    As root, PostgreSQL refuses to run: its binaries run as the ``postgres`` user (the
    Debian package creates it), and the directory is that user's. Durability is off (fsync):
    the data is thrown away anyway.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: rolls back open transactions, no waiting
    user, database = "digits", "digits"

    def __init__(self, root: Path | None = None, port: int | None = None):
        self.bin = find_postgres_bin()
        self._created = 0
        self._identity: dict[str, int] = {}
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")
            self._identity = {"user": entry.pw_uid, "group": entry.pw_gid}
            if root is not None and not _reachable(Path(root), entry.pw_uid, entry.pw_gid):
                root = None  # e.g. under pytest's private (0700) directories: a /tmp one
        super().__init__(root, port)
        if self._identity:
            os.chown(self.root, self._identity["user"], self._identity["group"])
        self.data = self.root / "data"

    def identity(self) -> dict[str, int]:
        return self._identity

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def prepare(self) -> None:
        if self.data.exists():
            return
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                   "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])

    def command(self) -> list[str]:
        return [str(self.bin / "postgres"), "-D", str(self.data),
                "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]

    def start(self) -> "PostgresServer":
        super().start()
        self.new_database(self.database)
        return self

    def ready(self) -> bool:
        import psycopg

        try:
            psycopg.connect(f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres",
                            connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False

    def new_database(self, name: str | None = None) -> str:
        """Create the database ``name`` (a fresh one when None) if missing; its URL."""
        import psycopg

        self._created += 1
        name = name or f"db{self._created}_{os.getpid()}"
        with psycopg.connect(f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root,
                              **self._identity)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout}{done.stderr}")


def _reachable(path: Path, uid: int, gid: int) -> bool:
    """Whether the user ``uid`` may pass through every existing directory above ``path``."""
    import stat

    for parent in Path(path).resolve().parents:
        try:
            info = parent.stat()
        except FileNotFoundError:
            continue
        if not (info.st_mode & stat.S_IXOTH or (info.st_uid == uid and info.st_mode & stat.S_IXUSR)
                or (info.st_gid == gid and info.st_mode & stat.S_IXGRP)):
            return False
    return True


# -- Redis ----------------------------------------------------------------------------------
class RedisServer(BackingServer):
    """``redis-server`` on loopback with no persistence: its state lives as long as it does,
    and a restart loses every key and script, as a crashed Redis would."""

    name = "redis"
    stop_signal = signal.SIGKILL  # as if it crashed (nothing to save); a frozen one goes too

    def __init__(self, root: Path | None = None, port: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissing("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        super().__init__(root, port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.root)]

    def ready(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:  # not listening yet
            return False

    def client(self):
        """A client of its own (the caller's view of the keys, not a limiter's)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, but nothing answers (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


# -- S3 -------------------------------------------------------------------------------------
class S3Server(BackingServer):
    """moto's standalone S3-compatible server (a real HTTP endpoint; state in memory)."""

    name = "s3"
    CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                "-p", str(self.port)]

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.CREDENTIALS}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def config_section(self) -> str:
        """The [s3] section a server config needs to reach this endpoint."""
        return (f'[s3]\nendpoint_url = "{self.endpoint_url}"\nregion = "us-east-1"\n'
                'access_key_id = "testing"\nsecret_access_key = "testing"\n')
