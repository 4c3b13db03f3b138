"""``serve --workers N``: the parent's settings, logging and supervisor, from the CLI."""
from __future__ import annotations

from pathlib import Path

from .. import logs
from ..config import load_settings
from .supervisor import ClusterOptions, Supervisor
from .worker import worker_main

DRAIN_MARGIN_S = 40.0  # beyond server.shutdown_timeout: the input log's flush and pools' stop


def serve_cluster(config_path: Path | None, workers: int, socket_dir: Path | None,
                  host: str | None = None, port: int | None = None, daemon: bool = False,
                  pidfile: Path | None = None) -> int:
    settings = load_settings(config_path)
    cp = settings.cherrypy
    logs.configure(settings.logging, screen=not daemon)  # no writer thread: the parent forks
    options = ClusterOptions(
        workers=workers, host=host or cp["server.socket_host"],
        port=cp["server.socket_port"] if port is None else port,
        run_root=settings.service.run_dir, socket_dir=socket_dir, pidfile=pidfile,
        daemon=daemon, backlog=cp["server.socket_queue_size"],
        stop_timeout_s=float(cp["server.shutdown_timeout"]) + DRAIN_MARGIN_S)
    return Supervisor(options, worker_main(config_path, host, port)).run()
