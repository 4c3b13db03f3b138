"""Helpers shared by the tests: repo paths and a real server process on a loopback port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


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
            except requests.ConnectionError:
                pass
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
