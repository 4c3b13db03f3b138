"""``python -m service classify PATH...``: a folder of images through a running service.

Walks the paths for image files, sends them in batches (the native JSON API, or the Open
Inference Protocol: ``wires.py``) on a few threads,
shows a progress bar with images/s, retries 429 and 503 as ``Retry-After`` says, and writes
one row per file. Files in folders named by their digit (``.../7/img.png``) are scored:
accuracy and a confusion matrix. A batch the service refuses because of one image is sent
again one image at a time, so the other files still get their answer.

Only HTTP: nothing here imports TensorFlow or the server's code paths.
"""
from __future__ import annotations

import csv
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import requests
from tqdm import tqdm

from .wires import WIRES, Answer

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"}
RETRY_STATUSES = {429, 503}
MAX_WAIT_S = 30.0           # the longest Retry-After honoured (and the back-off's cap)
TIMEOUT_S = 60.0
FIELDS = ("path", "label", "class", "probability", "top_k", "model", "version", "request_id",
          "error")


@dataclass(frozen=True)
class Options:
    url: str
    model: str = "digits-cnn"
    batch: int = 64
    concurrency: int = 4
    api_key: str | None = None
    retries: int = 8
    top_k: int = 3
    progress: bool = True
    protocol: str = "native"  # or "v2" (wires.WIRES)


@dataclass
class Row:
    """One file's answer (``error`` set when it got none)."""

    path: str
    label: int | None = None   # from a folder named by a digit
    class_: int | None = None
    probability: float | None = None
    top_k: list = field(default_factory=list)
    model: str = ""
    version: int | None = None
    request_id: str = ""
    error: str = ""

    def as_dict(self) -> dict:
        data = asdict(self)
        data["class"] = data.pop("class_")
        return {k: data[k] for k in FIELDS}


class Failed(Exception):
    """A request that got no usable answer: ``message`` for every file in it."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def image_files(paths: Iterable[Path]) -> list[Path]:
    """Every image file under ``paths`` (files as given, folders walked), sorted."""
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found.update(p for p in path.rglob("*")
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.add(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return sorted(found)


def folder_label(path: Path) -> int | None:
    name = path.parent.name
    return int(name) if len(name) == 1 and name.isdigit() else None


class Classifier:
    """Sends batches with one ``requests.Session`` per thread, retrying what may be retried."""

    def __init__(self, options: Options):
        self.options = options
        self.wire = WIRES[options.protocol](options.url, options.model, options.top_k)
        self._local = threading.local()
        self.retried = 0  # requests sent again after a 429/503 or a lost connection
        self._lock = threading.Lock()

    def classify(self, files: list[Path]) -> list[Row]:
        rows = [Row(str(f), folder_label(f)) for f in files]
        chunks = [rows[i:i + self.options.batch] for i in range(0, len(rows), self.options.batch)]
        with tqdm(total=len(rows), unit="img", file=sys.stderr, disable=not self.options.progress,
                  desc="classify") as bar, ThreadPoolExecutor(self.options.concurrency) as pool:
            for done in pool.map(self._batch, chunks):
                bar.update(done)
        return rows

    def _batch(self, rows: list[Row]) -> int:
        """Fill ``rows`` in place; one image at a time if the batch as a whole is refused."""
        try:
            self._fill(rows, self._send(rows))
        except Failed as exc:
            if exc.status is None or exc.status >= 500 or len(rows) == 1:
                for row in rows:
                    row.error = str(exc)
            else:  # a client error names one image: find it, answer the rest
                for row in rows:
                    self._batch([row])
        return len(rows)

    def _send(self, rows: list[Row]) -> Answer:
        request = self.wire.request([Path(r.path) for r in rows])
        if self.options.api_key:
            request["headers"] = {**request.get("headers", {}), "X-API-Key": self.options.api_key}
        wait = 0.5
        for attempt in range(self.options.retries + 1):
            try:
                response = self._session().post(**request, timeout=TIMEOUT_S)
            except requests.RequestException as exc:  # refused, reset, timed out: try again
                error, delay = Failed(f"no answer: {exc}"), wait
            else:
                if response.status_code == 200:
                    return self.wire.answer(response)
                error = Failed(_message(response), response.status_code)
                if response.status_code not in RETRY_STATUSES:
                    raise error
                delay = _retry_after(response, wait)
            if attempt == self.options.retries:
                raise error
            with self._lock:
                self.retried += 1
            time.sleep(delay)
            wait = min(wait * 2, MAX_WAIT_S)
        raise AssertionError("unreachable")

    @staticmethod
    def _fill(rows: list[Row], answer: Answer) -> None:
        for row, (class_, probability, top_k) in zip(rows, answer.predictions):
            row.class_, row.probability, row.top_k = class_, probability, top_k
            row.model, row.version = answer.model, answer.version
            row.request_id = answer.request_id

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session


def _message(response: requests.Response) -> str:
    try:
        error = response.json()["error"]
        if isinstance(error, str):  # the standard protocols' shape
            return f"{response.status_code}: {error}"
        return f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:200]}"


def _retry_after(response: requests.Response, fallback: float) -> float:
    try:
        return min(max(float(response.headers["Retry-After"]), 0.0), MAX_WAIT_S)
    except (KeyError, ValueError):
        return fallback


def write_rows(rows: list[Row], out: Path) -> None:
    """``.jsonl``: one object a line; anything else: CSV (top_k as JSON)."""
    if out.suffix.lower() == ".jsonl":
        out.write_text("".join(json.dumps(r.as_dict()) + "\n" for r in rows))
        return
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            data = row.as_dict()
            data["top_k"] = json.dumps(data["top_k"])
            writer.writerow(data)


def confusion(rows: list[Row], classes: int = 10) -> np.ndarray | None:
    """Rows: true digit (from the folder), columns: the class read; None without labels."""
    scored = [r for r in rows if r.label is not None and r.class_ is not None]
    if not scored:
        return None
    matrix = np.zeros((classes, classes), np.int64)
    for row in scored:
        matrix[row.label, row.class_] += 1
    return matrix


def summary(rows: list[Row], seconds: float, retried: int) -> Iterator[str]:
    failed = [r for r in rows if r.error]
    yield (f"{len(rows)} files in {seconds:.1f} s ({len(rows) / max(seconds, 1e-9):,.0f} "
           f"images/s), {len(failed)} failed, {retried} request(s) retried")
    for row in failed[:10]:
        yield f"  {row.path}: {row.error}"
    if len(failed) > 10:
        yield f"  ... and {len(failed) - 10} more"
