"""The cluster's notice board: files in the run directory that every process reads.

Each worker publishes its own entry (state, models, its scrape-time metrics) about once a
second; the parent publishes which process holds each slot and how often it was replaced.
Any worker answers ``/status``, ``/readyz`` and ``/metrics`` for the whole cluster from
these files. A hot reload asked of one worker is posted here for the others.

Files are replaced atomically (write, then rename), so a reader sees a whole entry or the
previous one, never half of one. Nothing here imports CherryPy, TensorFlow or Prometheus:
the parent reads and writes the board too.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .identity import Worker

PUBLISH_INTERVAL_S = 1.0   # how often a worker refreshes its entry
STALE_S = 5.0              # an entry older than this is a worker that stopped answering


@dataclass(frozen=True)
class ReloadRequest:
    """``POST /v1/models/<model>/reload`` on one worker, for every worker to follow."""

    model: str
    version: int | None    # None: the newest
    seq: int               # newer requests have larger numbers
    by: str                # the worker that was asked

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "seq": self.seq, "by": self.by}


class Board:
    """The board under ``run_dir``; cheap to create, safe to use from any process."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "board"
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- workers ------------------------------------------------------------------------------
    def publish(self, worker: Worker, entry: dict[str, Any]) -> None:
        """This worker's entry: ``state``, ``ready``, ``models``, ``metrics``..."""
        self._write(self._worker_file(worker), {
            **entry, "name": worker.name, "slot": worker.slot,
            "generation": worker.generation, "pid": os.getpid(), "updated": time.time()})

    def retract(self, worker: Worker) -> None:
        """Remove this worker's entry (it has stopped serving)."""
        try:
            self._worker_file(worker).unlink()
        except FileNotFoundError:
            pass

    def entry(self, slot: int, generation: int) -> dict[str, Any] | None:
        return self._read(self.dir / f"worker-{slot}.{generation}.json")

    def _worker_file(self, worker: Worker) -> Path:
        return self.dir / f"worker-{worker.slot}.{worker.generation}.json"

    # -- the parent ---------------------------------------------------------------------------
    def publish_parent(self, data: dict[str, Any]) -> None:
        """``{"pid", "workers", "slots": [{"slot", "pid", "generation", "restarts", ...}]}``."""
        self._write(self.dir / "parent.json", {**data, "updated": time.time()})

    def parent(self) -> dict[str, Any] | None:
        return self._read(self.dir / "parent.json")

    def current(self) -> list[dict[str, Any]]:
        """Each slot as the parent sees it, with its current process's own entry (``entry``,
        None while it starts) and whether that entry is fresh and ready."""
        parent = self.parent() or {"slots": []}
        now = time.time()
        slots = []
        for slot in parent["slots"]:
            entry = self.entry(slot["slot"], slot["generation"])
            fresh = entry is not None and entry.get("pid") == slot["pid"] \
                and now - entry["updated"] < STALE_S
            slots.append({**slot, "entry": entry if fresh else None,
                          "ready": bool(fresh and entry.get("ready"))})
        return slots

    # -- hot reloads --------------------------------------------------------------------------
    def post_reload(self, model: str, version: int | None, by: str) -> ReloadRequest:
        request = ReloadRequest(model, version, time.time_ns(), by)
        self._write(self.dir / f"reload-{model}.json", request.to_dict())
        return request

    def reloads(self) -> list[ReloadRequest]:
        found = []
        for path in sorted(self.dir.glob("reload-*.json")):
            data = self._read(path)
            if data is not None:
                found.append(ReloadRequest(**data))
        return found

    def clear_reloads(self) -> None:
        """Forget posted reloads: replacements start from the config again (SIGHUP)."""
        for path in self.dir.glob("reload-*.json"):
            path.unlink(missing_ok=True)

    # -- plumbing -----------------------------------------------------------------------------
    def _write(self, path: Path, data: dict[str, Any]) -> None:
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(temp, path)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
