"""What a forked worker runs: prometheus_client's multiprocess mode, then the web app."""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from .identity import Worker
from .supervisor import WorkerMain

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when first imported


def worker_main(config_path: Path | None, host: str | None, port: int | None) -> WorkerMain:
    """The function a forked child runs: it serves until SIGTERM, then exits the process."""
    def main(worker: Worker, listener: socket.socket | None, socket_path: Path | None) -> None:
        os.environ[MULTIPROC_ENV] = str(worker.run_dir / "metrics")
        # Ctrl-C reaches the whole process group; the parent turns it into an orderly stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        from ..web.app import serve_worker  # CherryPy, then TensorFlow: after the fork

        os._exit(serve_worker(config_path, worker, listener, socket_path, host, port))
    return main
