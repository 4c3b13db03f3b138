"""``make replicas``: stateless replicas on shared stores, all on this machine's loopback.

:class:`LocalReplicas` starts PostgreSQL (input log records, API keys), Redis (rate limits and
in-flight caps), an S3-compatible server (model versions, input log images: the shipped
graphs are published into it), N replicas -- each ``python -m service serve`` on a port of
its own with ``--replica-id replica-<i>`` and one generated config -- and nginx in front of
them (deploy/nginx.conf, the upstreams over TCP). The tests drive the same class; Ctrl-C
(or SIGTERM) stops everything in reverse order, and the stores' data goes with them.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .. import cpu_placement
from ..cluster.front import Front, find_nginx, listens, stop_child, write_config
from ..cluster.supervisor import die_with_parent
from ..config import REPO_ROOT, config_parser, load_settings
from .servers import PostgresServer, RedisServer, S3Server, free_port

DEFAULT_PREFIX = REPO_ROOT / "var" / "replicas"
MODELS_BUCKET, INPUTLOG_BUCKET = "digits-models", "digits-inputlog"
READY_TIMEOUT_S = 300.0
REPLICA_STOP_S = 60.0


def wait_ready(url: str, proc: subprocess.Popen | None, log_path: Path,
               timeout: float = READY_TIMEOUT_S, name: str = "the service") -> None:
    """Until ``url``/readyz answers 200; RuntimeError with the log's tail if ``proc`` exits
    first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise RuntimeError(f"{name} did not become ready:\n{tail}")


def say(line: str) -> None:
    print(f"replicas: {line}", file=sys.stderr, flush=True)


@dataclass
class Replica:
    index: int
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"replica-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class LocalReplicas:
    """The stores, the replicas and nginx; ``start()``, ``stop()``, or ``run()`` until Ctrl-C."""

    prefix: Path = DEFAULT_PREFIX
    port: int = 8080
    count: int = 2
    base_config: Path | None = None
    extra_config: str = ""           # more settings, e.g. [ratelimit] limits (tests)
    keys: bool = False               # API keys on, in PostgreSQL
    poll_interval_s: float = 5.0     # each replica looks in the bucket for new versions
    python: str = sys.executable
    replicas: list[Replica] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.prefix = Path(self.prefix).resolve()
        self.postgres: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.s3: S3Server | None = None
        self.nginx: subprocess.Popen | None = None
        self.config_path = self.prefix / "replica.conf"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> "LocalReplicas":
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.postgres = PostgresServer(self.prefix / "postgres").start()
        self.redis = RedisServer(self.prefix / "redis").start()
        self.s3 = S3Server(self.prefix / "s3").start()
        say(f"PostgreSQL {self.postgres.url}, Redis {self.redis.url}, S3 {self.s3.endpoint_url}")
        self._publish_shipped_graphs()
        self._write_config()
        self.replicas = [Replica(i, free_port(), self.prefix / f"replica-{i}.log")
                         for i in range(self.count)]
        for replica in self.replicas:
            self.start_replica(replica)
        for replica in self.replicas:
            self.wait_ready(replica)
        self._start_nginx(nginx)
        say(f"serving on {self.url}/ through nginx: "
            + ", ".join(f"{r.name} {r.url} (log {r.log_path})" for r in self.replicas))
        return self

    def start_replica(self, replica: Replica) -> None:
        """(Re)start ``replica``'s process; :meth:`wait_ready` waits for it."""
        log = open(replica.log_path, "ab")
        replica.proc = subprocess.Popen(
            [self.python, "-m", "service", "serve", "--config", str(self.config_path),
             "--port", str(replica.port), "--replica-id", replica.name],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=functools.partial(_start_replica, os.getpid(), self._cpus(replica)))
        log.close()

    def _cpus(self, replica: Replica) -> list[int]:
        """The replica's own share of this machine's CPUs, as a container's cpuset would
        give it: its threads (and TF's) fit them, instead of every replica taking all."""
        return cpu_placement.share(sorted(cpu_placement.available_cpus()), replica.index,
                                   self.count)

    def wait_ready(self, replica: Replica, timeout: float = READY_TIMEOUT_S) -> None:
        wait_ready(replica.url, replica.proc, replica.log_path, timeout, replica.name)

    def stop(self) -> None:
        """nginx first (no new requests), then the replicas (they drain), then the stores."""
        if self.nginx is not None:
            stop_child(self.nginx, [(signal.SIGQUIT, 15.0), (signal.SIGTERM, 5.0)])
            self.nginx = None
        for replica in self.replicas:
            if replica.proc is not None:
                stop_child(replica.proc, [(signal.SIGTERM, REPLICA_STOP_S)])
                replica.proc = None
        for server in (self.s3, self.redis, self.postgres):
            if server is not None:
                server.cleanup()

    def run(self) -> int:
        """Start, then wait for Ctrl-C or SIGTERM (or a replica or nginx dying)."""
        stopping: list[int] = []
        previous = {s: signal.signal(s, lambda signum, _f: stopping.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                self.start()
            except (RuntimeError, OSError) as exc:  # a server missing or failing to start
                say(f"cannot start: {exc}")
                return 2
            say("Ctrl-C stops everything")
            while not stopping:
                dead = [r.name for r in self.replicas if r.proc and r.proc.poll() is not None]
                if dead or (self.nginx and self.nginx.poll() is not None):
                    say(f"{', '.join(dead) or 'nginx'} exited; stopping")
                    return 1
                time.sleep(0.2)
            return 0
        finally:
            say("stopping nginx, the replicas, then the stores")
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # -- the parts -------------------------------------------------------------------------
    def _publish_shipped_graphs(self) -> None:
        from ..models.publish import S3Location, publish

        client = self.s3.client()
        for bucket in (MODELS_BUCKET, INPUTLOG_BUCKET):
            client.create_bucket(Bucket=bucket)
        graphs = REPO_ROOT / "graphs"
        for model in sorted(p for p in graphs.iterdir() if p.is_dir()):
            for version in sorted((v for v in model.iterdir() if v.name.isdigit()),
                                  key=lambda v: int(v.name)):
                publish(client, version, model.name, int(version.name),
                        S3Location(MODELS_BUCKET, "models/"), say=lambda line: None)
        say(f"published the shipped graphs to s3://{MODELS_BUCKET}/models/")

    def publish(self, directory: Path, model: str, version: int) -> None:
        """Publish one more version to the replicas' bucket (as ``service publish`` does)."""
        from ..models.publish import S3Location, publish

        publish(self.s3.client(), directory, model, version,
                S3Location(MODELS_BUCKET, "models/"), say=lambda line: None)

    def _write_config(self) -> None:
        """The base config with every store pointed at the servers started here."""
        parser = config_parser()
        if self.base_config is not None:
            parser.read(self.base_config)
        parser.read_string(self.extra_config)
        url = self.postgres.url
        settings = {
            "service": {"trusted_proxies": ["127.0.0.1"]},  # nginx, on loopback
            "s3": {"endpoint_url": self.s3.endpoint_url, "region": "us-east-1",
                   "access_key_id": "testing", "secret_access_key": "testing"},
            "store": {"kind": "s3", "bucket": MODELS_BUCKET, "prefix": "models/",
                      "cache_dir": str(self.prefix / "model-cache"),
                      "poll_interval_s": self.poll_interval_s},
            "inputlog": {"backend": "s3", "bucket": INPUTLOG_BUCKET, "database_url": url,
                         "dir": str(self.prefix / "inputlog")},
            "ratelimit": {"redis_url": self.redis.url},
        }
        if self.keys:
            settings["auth"] = {"keys_database_url": url}
        for section, values in settings.items():
            if not parser.has_section(section):
                parser.add_section(section)
            for key, value in values.items():
                parser.set(section, key, repr(value))
        with open(self.config_path, "w") as handle:
            handle.write("# Generated by `python -m service replicas`; edits are lost.\n")
            parser.write(handle)
        load_settings(self.config_path)  # refused here, naming the key, not by N replicas

    def _start_nginx(self, nginx: str) -> None:
        settings = load_settings(self.config_path)
        front = Front(prefix=self.prefix / "front", host="127.0.0.1", port=self.port,
                      workers=self.count, max_body=settings.service.max_body_bytes,
                      upstreams=tuple(f"127.0.0.1:{r.port}" for r in self.replicas))
        write_config(front)
        self.nginx = subprocess.Popen(
            [nginx, "-p", str(front.prefix), "-c", str(front.conf), "-g", "daemon off;"],
            start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid()))
        deadline = time.monotonic() + 30
        while not listens("127.0.0.1", self.port):
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start; see {front.prefix / 'logs'}")
            time.sleep(0.05)


def _start_replica(parent: int, cpus: list[int]) -> None:
    """In the forked child, before exec: die with the launcher, run on ``cpus``."""
    die_with_parent(parent)
    os.sched_setaffinity(0, cpus)
