"""What a forked worker runs: prometheus_client's multiprocess mode, then the web app."""
from __future__ import annotations

import ctypes
import os
import signal
import socket
from pathlib import Path

from .identity import Worker
from .supervisor import WorkerMain

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when first imported
M_ARENA_MAX = -8                            # mallopt(3)
MALLOC_ARENAS = 2


def worker_main(config_path: Path | None, host: str | None, port: int | None) -> WorkerMain:
    """The function a forked child runs: it serves until SIGTERM, then exits the process."""
    def main(worker: Worker, listener: socket.socket | None, socket_path: Path | None) -> None:
        os.environ[MULTIPROC_ENV] = str(worker.run_dir / "metrics")
        limit_malloc_arenas()
        # Ctrl-C reaches the whole process group; the parent turns it into an orderly stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        from ..web.app import serve_worker  # CherryPy, then TensorFlow: after the fork

        os._exit(serve_worker(config_path, worker, listener, socket_path, host, port))
    return main


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas (one per thread by default, up to 8 per core): with 30-odd
    request threads and TensorFlow's, the spare arenas cost a worker ~50 MB of RSS for
    nothing measurable (bench/RESULTS.md). ``MALLOC_ARENA_MAX`` in the environment wins."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc: nothing to cap
        pass
