"""nginx in front of the workers: the config rendered from deploy/nginx.conf, and the launcher
of ``python -m service cluster`` (``make cluster``).

``run_cluster`` starts ``serve --workers N --socket-dir <prefix>/sockets`` as a child, waits
until every worker's socket answers ``/healthz``, then runs nginx in the foreground
(``nginx -p <prefix> -c <prefix>/nginx.conf -g 'daemon off;'``) on the given port. Ctrl-C or
SIGTERM stops both -- nginx gracefully (SIGQUIT, then SIGTERM), then the service (SIGTERM:
the workers drain) -- and exits 0. If either child dies, the other is stopped and the exit
status says which: 1 the service, 3 nginx; 2 when it cannot start (nginx missing, a bad
config). SIGHUP re-renders both configs and passes SIGHUP on (nginx reloads its config, the
service replaces its workers one at a time).

The service is given a copy of its config, ``<prefix>/service.conf``, in which ``[service]
trusted_proxies`` includes ``"unix"``: nginx reaches the workers over their Unix sockets,
and the socket directory is made private (0700), so the only peers there are nginx and
processes of the same user. Without it the service would see every client as nginx.

Nothing here imports CherryPy or TensorFlow: the service child does.
"""
from __future__ import annotations

import ast
import functools
import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import REPO_ROOT, UNIX_PEER, config_parser, load_settings
from .supervisor import die_with_parent, socket_name

TEMPLATE = REPO_ROOT / "deploy" / "nginx.conf"
DEFAULT_PREFIX = REPO_ROOT / "var" / "cluster"
INSTALL_HINT = ("nginx is not installed (or not on PATH). Install the Debian package:\n"
                "    sudo apt-get install nginx\n"
                "(`make cluster` only runs the nginx binary; it needs no system service.)")
START_TIMEOUT_S = 300.0   # every worker answers /healthz within this
NGINX_START_TIMEOUT_S = 30.0
NGINX_QUIT_S = 15.0       # SIGQUIT (graceful) before SIGTERM
SERVICE_STOP_S = 90.0     # SIGTERM (the workers drain) before SIGKILL of the process group
TICK_S = 0.1
GROUP_STOP_S = 5.0       # what is left of a child's process group, after it exited
SOCKET_PATH_MAX = 107     # sun_path, less its terminating NUL
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
EXIT_STOPPED, EXIT_SERVICE_DIED, EXIT_CANNOT_START, EXIT_NGINX_DIED = 0, 1, 2, 3


class CannotStart(Exception):
    """Said to the user as is; the exit status is 2."""


@dataclass(frozen=True)
class Front:
    """What the template needs."""

    prefix: Path           # nginx's -p: its pid file, logs/ and tmp/ (and our sockets/)
    host: str
    port: int
    workers: int
    max_body: int          # [service] max_body_bytes
    static_dir: Path = REPO_ROOT / "static"
    # Upstreams other than the workers' sockets: "host:port" of replicas (make replicas).
    upstreams: tuple[str, ...] = ()

    @property
    def socket_dir(self) -> Path:
        return self.prefix / "sockets"

    def sockets(self) -> list[Path]:
        """The workers' sockets, as ``serve --socket-dir`` names them."""
        return [self.socket_dir / socket_name(slot) for slot in range(self.workers)]

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pidfile(self) -> Path:
        return self.prefix / "nginx.pid"


def render(front: Front, template: str | None = None) -> str:
    """The template filled in for ``front``; its header comment (which documents the
    placeholders) is replaced by a line saying where the file came from."""
    text = TEMPLATE.read_text() if template is None else template
    lines = text.splitlines(keepends=True)
    body = "".join(lines[next((i for i, line in enumerate(lines)
                               if line.strip() and not line.startswith("#")), len(lines)):])
    addresses = front.upstreams or tuple(f"unix:{path}" for path in front.sockets())
    servers = "".join(f"        server {address} max_fails=3 fail_timeout=2s;\n"
                      for address in addresses).rstrip("\n")
    values = {
        "prefix": str(front.prefix), "port": str(front.port),
        "host": f"[{front.host}]" if ":" in front.host else front.host,  # IPv6: bracketed
        "upstream_servers": servers, "static_dir": str(front.static_dir).rstrip("/"),
        "max_body": str(front.max_body), "user": _user_line(),
    }

    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise CannotStart(f"{TEMPLATE}: unknown placeholder {match.group(0)}")
        return values[match.group(1)]

    header = (f"# Generated from {TEMPLATE} by `python -m service cluster`; edits are lost.\n"
              f"# nginx -p {front.prefix} -c {front.conf} -g 'daemon off;'\n\n")
    return header + PLACEHOLDER.sub(fill, body)


def _user_line() -> str:
    """nginx started as root runs its workers as ``user``: keep them this user, who owns the
    private socket directory and the prefix (as anyone else nginx ignores the directive)."""
    if os.geteuid() != 0:
        return "# user: not root, so nginx's workers run as the user who starts it"
    return f"user {pwd.getpwuid(os.geteuid()).pw_name};"


def write_config(front: Front) -> Path:
    """Render the template into ``<prefix>/nginx.conf``; make the directories it names."""
    for path in front.sockets():
        if len(os.fsencode(path)) > SOCKET_PATH_MAX:
            raise CannotStart(f"the socket path {path} is longer than {SOCKET_PATH_MAX} bytes; "
                              "choose a shorter --prefix")
    for sub in ("logs", "tmp"):
        (front.prefix / sub).mkdir(parents=True, exist_ok=True)
    front.socket_dir.mkdir(parents=True, exist_ok=True)
    front.socket_dir.chmod(0o700)  # only this user (nginx, the workers) may connect
    text = render(front)
    tmp = front.conf.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, front.conf)
    return front.conf


def service_config(source: Path | None, prefix: Path) -> Path:
    """``source`` (None: every default) copied to ``<prefix>/service.conf`` with ``"unix"``
    added to ``[service] trusted_proxies``; checked as the service will check it."""
    parser = config_parser()
    if source is not None:
        with open(source) as handle:
            parser.read_file(handle)
    if not parser.has_section("service"):
        parser.add_section("service")
    current = parser.get("service", "trusted_proxies", fallback="[]")
    try:
        entries = list(ast.literal_eval(current))
    except (ValueError, SyntaxError, TypeError):
        entries = None  # load_settings below names the key
    if entries is not None and UNIX_PEER not in entries:
        parser.set("service", "trusted_proxies", repr([*entries, UNIX_PEER]))
    prefix.mkdir(parents=True, exist_ok=True)
    target = prefix / "service.conf"
    with open(target, "w") as handle:
        handle.write(f"# Generated by `python -m service cluster` from {source or 'defaults'}, "
                     f"with {UNIX_PEER!r} in [service] trusted_proxies (nginx's peer); "
                     "edits are lost.\n")
        parser.write(handle)
    load_settings(target)  # a bad config is refused here, naming the key, not by N workers
    return target


def find_nginx(name: str = "nginx") -> str | None:
    """The nginx binary: on PATH, or in the sbin directories a user's PATH often lacks."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    extra = os.pathsep.join(("/usr/sbin", "/usr/local/sbin", "/sbin"))
    return shutil.which(name) or shutil.which(name, path=extra)


# -- talking to the workers -----------------------------------------------------------------
class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (a worker's)."""

    def __init__(self, path: Path, timeout: float = 2.0):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def answers(path: Path, route: str = "/healthz") -> bool:
    """The worker on ``path`` answers ``route`` with 200."""
    conn = UnixHTTPConnection(path)
    try:
        conn.request("GET", route)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# -- the launcher ---------------------------------------------------------------------------
def say(line: str) -> None:
    print(f"cluster: {line}", file=sys.stderr, flush=True)


class Cluster:
    """The two children and their lifecycle; ``run`` returns the exit status."""

    def __init__(self, config: Path | None, front: Front, nginx: str,
                 python: str = sys.executable):
        self.config = config
        self.front = front
        self.nginx = nginx
        self.python = python
        self.service: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.stop_signal: int | None = None
        self.reload = False

    # signals: only noted here; acted on by the loop
    def _on_stop(self, signum: int, _frame) -> None:
        self.stop_signal = signum

    def _on_hup(self, _signum: int, _frame) -> None:
        self.reload = True

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        try:
            return self._run()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self) -> int:
        front = self.front
        self._refuse_if_running()
        service_conf = service_config(self.config, front.prefix)
        write_config(front)
        for path in front.sockets():
            path.unlink(missing_ok=True)  # a previous run's: must not look alive
        self.service = self._spawn(
            [self.python, "-m", "service", "serve", "--config", str(service_conf),
             "--workers", str(front.workers), "--socket-dir", str(front.socket_dir),
             "--pidfile", str(front.prefix / "service.pid")])
        say(f"service pid {self.service.pid}: {front.workers} worker(s) on "
            f"{front.socket_dir}/worker-*.sock; waiting for every worker's /healthz")
        status = self._wait(lambda: all(answers(p) for p in front.sockets()), START_TIMEOUT_S,
                            "every worker answering /healthz")
        if status is not None:
            return status
        # No `-e stderr` (nginx >= 1.19.5 only): until it has read the config, nginx logs to
        # its built-in error log (Debian's: stderr), then to <prefix>/logs/error.log.
        self.proxy = self._spawn([self.nginx, "-p", str(front.prefix), "-c", str(front.conf),
                                  "-g", "daemon off;"])
        status = self._wait(lambda: listens(front.host, front.port), NGINX_START_TIMEOUT_S,
                            f"nginx listening on {front.host}:{front.port}")
        if status is not None:
            return status
        say(f"serving on http://{front.host}:{front.port}/ (nginx pid {self.proxy.pid}; "
            f"config {front.conf}, logs {front.prefix / 'logs'}); Ctrl-C stops")
        while True:
            status = self._check()
            if status is not None:
                return status
            time.sleep(TICK_S)

    def _refuse_if_running(self) -> None:
        for name in ("nginx.pid", "service.pid"):
            try:
                pid = int((self.front.prefix / name).read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                continue
            raise CannotStart(f"another cluster runs in {self.front.prefix} ({name}: pid {pid}); "
                              "stop it first, or pass another --prefix")

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        # Its own session: the terminal's Ctrl-C reaches us only, and we stop the children in
        # order. The kernel sends SIGTERM to a child whose launcher dies (say, kill -9).
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(args, cwd=REPO_ROOT, env=env, start_new_session=True,
                                preexec_fn=functools.partial(die_with_parent, os.getpid()))

    def _wait(self, ready, timeout: float, what: str) -> int | None:
        """Until ``ready()``; None then, else the exit status (a child died, a signal came)."""
        deadline = time.monotonic() + timeout
        while not ready():
            status = self._check()
            if status is not None:
                return status
            if time.monotonic() > deadline:
                say(f"gave up waiting for {what} after {timeout:g} s")
                return EXIT_CANNOT_START
            time.sleep(TICK_S)
        return None

    def _check(self) -> int | None:
        """A signal to act on or a child gone: the exit status; else None."""
        if self.stop_signal is not None:
            say(f"{signal.Signals(self.stop_signal).name}: stopping nginx, then the service")
            return self._stop_all()
        if self.reload:
            self.reload = False
            self._reload()
        if self.service is not None and self.service.poll() is not None:
            say(f"the service exited ({_describe(self.service.returncode)}); stopping nginx")
            return EXIT_SERVICE_DIED
        if self.proxy is not None and self.proxy.poll() is not None:
            say(f"nginx exited ({_describe(self.proxy.returncode)}); stopping the service "
                f"(nginx's errors: {self.front.prefix / 'logs' / 'error.log'} and above)")
            return EXIT_NGINX_DIED
        return None

    def _reload(self) -> None:
        say("SIGHUP: re-reading the configs; nginx reloads, the service replaces its workers")
        try:
            service_config(self.config, self.front.prefix)
            write_config(self.front)
        except Exception as exc:  # a bad edit: keep serving with what runs
            say(f"not reloaded: {exc}")
            return
        for child in (self.proxy, self.service):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGHUP)

    def _stop_all(self) -> int:
        """nginx first (no new requests reach a draining worker), then the service."""
        status = EXIT_STOPPED
        if self.proxy is not None:
            stop_child(self.proxy, [(signal.SIGQUIT, NGINX_QUIT_S), (signal.SIGTERM, 5.0)])
            self.proxy = None
        if self.service is not None:
            returncode = stop_child(self.service, [(signal.SIGTERM, SERVICE_STOP_S)])
            if self.stop_signal is not None and returncode not in (0, None):
                say(f"the service stopped with {_describe(returncode)}")
                status = EXIT_SERVICE_DIED
            self.service = None
        return status


def stop_child(proc: subprocess.Popen, steps: list[tuple[int, float]]) -> int:
    """Signal ``proc`` step by step until it exits, then end what is left of its process
    group (its own session): nginx's workers outlive a master killed with -9, say."""
    for signum, wait_s in steps:
        if proc.poll() is not None:
            break
        proc.send_signal(signum)
        try:
            proc.wait(wait_s)
            break
        except subprocess.TimeoutExpired:
            say(f"pid {proc.pid} still running {wait_s:g} s after {signal.Signals(signum).name}")
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGKILL)
    returncode = proc.wait()
    if _signal_group(proc.pid, signal.SIGTERM):
        deadline = time.monotonic() + GROUP_STOP_S
        while _signal_group(proc.pid, 0) and time.monotonic() < deadline:
            time.sleep(TICK_S)
        _signal_group(proc.pid, signal.SIGKILL)
    return returncode


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the process group; False when no process is left in it."""
    try:
        os.killpg(pgid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # not ours (cannot happen for our own children's groups)
        return False


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"status {returncode}"


def run_cluster(config: Path | None, port: int, workers: int, host: str = "127.0.0.1",
                prefix: Path = DEFAULT_PREFIX, nginx: str = "nginx") -> int:
    """``python -m service cluster``: the exit status (see the module docstring)."""
    binary = find_nginx(nginx)
    if binary is None:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_CANNOT_START
    if workers < 1:
        print(f"error: --workers must be >= 1, got {workers}", file=sys.stderr)
        return EXIT_CANNOT_START
    prefix = Path(prefix).resolve()
    settings = load_settings(config)  # ConfigError: the CLI says it and exits 2
    front = Front(prefix=prefix, host=host, port=port, workers=workers,
                  max_body=settings.service.max_body_bytes)
    try:
        return Cluster(config, front, binary).run()
    except CannotStart as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
