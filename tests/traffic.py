"""Clients predicting non-stop while a test kills, restarts or reloads servers under them."""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from support import FIXTURES

IMAGE = (FIXTURES / "digit7_28.png").read_bytes()
PNG = {"Content-Type": "image/png"}


@dataclass
class Traffic:
    """``clients`` threads POSTing a 7 to ``url``, each on its own keep-alive session.

    A connection that fails before a whole answer arrives (refused, reset, closed before or
    in the middle of the answer: a worker killed at any instant) is retried once, as a
    client of a replicated service would: a prediction is idempotent. Anything else -- a
    second such failure, an HTTP error, a wrong answer -- is a failure.
    """

    url: str
    clients: int = 8
    headers: dict[str, str] = field(default_factory=dict)
    pause_s: float = 0.0            # between one client's requests
    path: str = "/v1/models/digits-cnn/predict"
    json_body: dict | None = None   # sent instead of the PNG (e.g. several instances)
    served_by: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    retried: int = 0
    answered: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(self.clients)]

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _client(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                response = self._post(session)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                with self._lock:
                    self.retried += 1
                session.close()
                session = requests.Session()
                try:
                    response = self._post(session)
                except requests.RequestException as exc:
                    self._fail(f"after a retry: {exc!r}")
                    continue
            except requests.RequestException as exc:
                self._fail(repr(exc))
                continue
            self._check(response)
            if self.pause_s:
                time.sleep(self.pause_s)
        session.close()

    def _post(self, session: requests.Session) -> requests.Response:
        if self.json_body is not None:
            return session.post(self.url + self.path, json=self.json_body,
                                headers=self.headers, timeout=60)
        return session.post(self.url + self.path, data=IMAGE, headers={**PNG, **self.headers},
                            timeout=60)

    def _check(self, response: requests.Response) -> None:
        if response.status_code != 200:
            self._fail(f"{response.status_code} {response.text[:200]}")
            return
        body = response.json()
        read = {p["class"] for p in body["predictions"]}
        if read != {7}:
            self._fail(f"read as {sorted(read)}")
            return
        with self._lock:
            self.answered += 1
            self.served_by[response.headers.get("X-Served-By")] += 1
            self.versions[body["version"]] += 1
            self.request_ids.append(body["request_id"])

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def wait_answers(self, count: int, timeout: float = 60) -> None:
        """Until ``count`` more requests were answered (the load is really on)."""
        target = self.answered + count
        deadline = time.monotonic() + timeout
        while self.answered < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.answered >= target, f"only {self.answered} answers; {self.failures[:3]}"


def inputlog_request_ids(directory: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(directory / "inputlog.sqlite3") as conn:
        return {row[0] for row in conn.execute("SELECT request_id FROM predictions")}
