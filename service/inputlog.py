"""The input log: every predicted image and its records, kept for the next training run.

A :class:`PredictionSink`: ``record()`` only enqueues (the request path never waits on a
disk or a bucket); a writer thread stores each image once, content-addressed by the sha256
of its original bytes, then inserts the prediction records in one SQLite transaction. A
record is only inserted after its image is durably stored. Whatever cannot be written (queue
full, store or database failing) is dropped, counted by reason and logged -- never silently.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import inputlog_db as db
from .blobstore import BlobStore, BlobStoreError, LocalBlobStore, S3BlobStore, make_s3_client
from .config import InputLogSettings, S3Settings
from .dataplane import Instance, ModelResult, RequestContext
from .errors import Forbidden, InvalidInput, NotFound, Unavailable

log = logging.getLogger("service.inputlog")

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff",
              "WEBP": "webp", "MPO": "jpg"}
BATCH_MAX = 256            # queue items per transaction
POLL_S = 0.2               # how often an idle writer looks at the stop flag
LINGER_S = 0.02            # after the first queued record, wait this long for more
FEEDBACK_WAIT_S = 5.0      # feedback on a still-queued request waits this long for the writer
DROP_LOG_INTERVAL_S = 10.0  # repeated drops of one reason are summarised this often
STORED_CACHE = 50_000      # image rows the writer remembers (about 10 MB)
LabelsFor = Callable[[str], list[str]]
Caller = tuple[str, bool]  # (API key id, is it an admin key?)


@dataclass(frozen=True)
class Pending:
    """One successful predict call, as enqueued by ``record()``."""

    time: str
    context: RequestContext
    instances: list[Instance]
    results: dict[str, ModelResult]
    seq: int = 0  # order of enqueueing, for flush()

    @property
    def records(self) -> int:
        return len(self.instances) * len(self.results)


@dataclass(frozen=True)
class StoredImage:
    row: db.ImageRow
    new: bool  # True when this batch (re)stored the bytes


@dataclass
class Counters:
    written: int = 0            # prediction records committed
    images_written: int = 0     # image files/objects written (duplicates are not)
    images_pruned: int = 0
    dropped: Counter = field(default_factory=Counter)  # records lost, by reason
    bytes_on_disk: int = 0


def image_key(sha256: str, fmt: str | None) -> str:
    return f"images/{sha256[:2]}/{sha256}.{EXTENSIONS.get(fmt or '', 'bin')}"


def sniff(data: bytes) -> tuple[str | None, int | None, int | None]:
    """(format, width, height) from the header; (None, None, None) if Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format, img.width, img.height
    except Exception:  # the image was decoded for the prediction; this is only metadata
        return None, None, None


def make_store(settings: InputLogSettings, s3: S3Settings) -> BlobStore:
    if settings.backend == "s3":
        # Few quick retries: the writer thread must not stall for minutes on a dead endpoint.
        client = make_s3_client(s3, retries={"max_attempts": 2, "mode": "standard"},
                                connect_timeout=3, read_timeout=10)
        return S3BlobStore(client, settings.bucket or "", settings.prefix)
    return LocalBlobStore(settings.dir)


class InputLog:
    """Implements ``PredictionSink``; ``start()`` before the first request, ``stop()`` after the last."""

    def __init__(self, settings: InputLogSettings, s3: S3Settings | None = None,
                 labels_for: LabelsFor | None = None, store: BlobStore | None = None):
        self.settings = settings
        self.dir = Path(settings.dir)
        self.store = store or make_store(settings, s3 or S3Settings())
        self.labels_for = labels_for
        self.counters = Counters()
        self._queue: queue.Queue[Pending] = queue.Queue(settings.queue_size or 1)
        self._lock = threading.Lock()     # guards counters and drop-log times
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None  # the writer thread's own
        self._last_drop_log: dict[str, float] = {}
        self._lost: set[int] = set()      # ids of this batch's requests already counted as dropped
        # The writer's memory of what the database already holds, so a busy server's repeated
        # images and models cost no query: stored image rows (most recent last) and the
        # (model, version) pairs whose labels are saved.
        self._seq = itertools.count(1)    # next() is atomic: record() needs no lock
        self._last_queued = 0             # the newest seq put on the queue
        self._done_upto = 0               # every seq up to this is written or dropped
        self._done = threading.Condition()
        self._stored: OrderedDict[str, db.ImageRow] = OrderedDict()
        self._labels_saved: set[tuple[str, int]] = set()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if isinstance(self.store, LocalBlobStore):
            removed = self.store.remove_stale_temp_files()
            if removed:
                log.warning("removed %d temp file(s) left by an interrupted write", removed)
        try:
            self._connection()
        except Unavailable as exc:  # predictions go on; each lost record is counted
            log.error("%s; records will be dropped until it can be", exc.message)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="inputlog-writer", daemon=True)
        self._thread.start()
        log.info("input log at %s (images: %s)", self.dir, self._describe_store())

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything still queued (up to ``timeout``), then stop the writer."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("input log writer did not finish within %.0f s", timeout)
            self._thread = None
        self._drain_as_dropped("stopped")
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def flush(self, timeout: float = FEEDBACK_WAIT_S) -> bool:
        """Wait until every record queued so far is written (or dropped); False on timeout.

        Records queued meanwhile are not waited for, so this ends under continuous load too.
        """
        target = self._last_queued
        deadline = time.monotonic() + timeout
        with self._done:
            while self._done_upto < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(remaining)
        return True

    # -- PredictionSink -----------------------------------------------------------------------
    def record(self, context: RequestContext, instances: list[Instance],
               results: dict[str, ModelResult]) -> None:
        pending = Pending(db.utc_now(), context, list(instances), dict(results),
                          next(self._seq))
        if self._thread is None:
            self._drop("not_running", pending.records)
            return
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._drop("queue_full", pending.records)
            return
        self._last_queued = max(self._last_queued, pending.seq)

    # -- for metrics --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """written, images_written, images_pruned, dropped_by_reason, queue_depth, bytes_on_disk."""
        with self._lock:
            c = self.counters
            return {"written": c.written, "images_written": c.images_written,
                    "images_pruned": c.images_pruned, "dropped_by_reason": dict(c.dropped),
                    "queue_depth": self._queue.qsize(), "bytes_on_disk": c.bytes_on_disk}

    # -- feedback -----------------------------------------------------------------------------
    def feedback(self, request_id: str, label: str | None = None, class_id: int | None = None,
                 instance: int | None = None, caller: Caller | None = None) -> dict[str, Any]:
        """Record the true label of every record of ``request_id`` (or of one ``instance``).

        Give ``label`` or ``class_id``; it must be one of the labels of the models that answered.
        A ``caller`` (API key id, admin?) may only label its own predictions, unless admin.
        """
        conn = self._open()
        try:
            rows = db.request_records(conn, request_id)
            if not rows and self._done_upto < self._last_queued:
                written = self.flush()  # the request may still be waiting in the queue
                rows = db.request_records(conn, request_id)
                if not rows and not written:
                    raise Unavailable("Recent predictions are still being written to the input "
                                      "log; retry shortly.", "feedback_pending", retry_after=2)
            if not rows:
                raise NotFound(f"No logged prediction has request id {request_id!r}.",
                               "request_not_found")
            rows = _of_instance(rows, request_id, instance)
            _check_owner(rows, caller)
            label, class_id = self._resolve(conn, rows, label, class_id)
            updated = db.set_feedback(conn, [r["id"] for r in rows], label, class_id)
        finally:
            conn.close()
        return {"request_id": request_id, "label": label, "class": class_id, "updated": updated}

    def _resolve(self, conn: sqlite3.Connection, rows: list[sqlite3.Row], label: str | None,
                 class_id: int | None) -> tuple[str, int]:
        """(label, class id), checked against the labels of every model in ``rows``."""
        resolved: tuple[str, int] | None = None
        for model, version in sorted({(r["model"], r["version"]) for r in rows}):
            labels = db.labels(conn, model, version) or self._current_labels(model)
            if class_id is not None:
                if not 0 <= class_id < len(labels):
                    raise InvalidInput(f"class must be from 0 to {len(labels) - 1} for model "
                                       f"{model}, got {class_id}.", "bad_label")
                pair = (labels[class_id], class_id)
            elif label in labels:
                pair = (label, labels.index(label))
            else:
                raise InvalidInput(f"{label!r} is not a label of model {model}; expected one "
                                   f"of {labels}.", "bad_label")
            if resolved is not None and pair != resolved:
                raise InvalidInput("The models of this request label their classes differently; "
                                   "send the label and the instance.", "bad_label")
            resolved = pair
        assert resolved is not None
        return resolved

    def _current_labels(self, model: str) -> list[str]:
        try:
            if self.labels_for is not None:
                return list(self.labels_for(model))
        except Exception as exc:
            log.warning("labels of model %s unavailable: %s", model, exc)
        raise Unavailable(f"The labels of model {model} are not known now; try again later.",
                          "labels_unavailable", retry_after=5)

    # -- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            if not self._stopping.is_set():
                time.sleep(LINGER_S)  # let a busy server's records share one transaction
            batch = [first]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
                self._mark_done(batch[-1].seq)

    def _mark_done(self, seq: int) -> None:
        """Everything queued up to ``seq`` is written or dropped (the queue is in order)."""
        with self._done:
            self._done_upto = max(self._done_upto, seq)
            self._done.notify_all()

    def _write(self, batch: list[Pending]) -> None:
        try:
            conn = self._connection()
            images, rows = self._collect(conn, batch)
            new_images = [s.row for s in images.values() if s.new]
            db.write_batch(conn, new_images, rows)
        except Exception as exc:  # the writer must survive anything one batch does
            lost = sum(p.records for p in batch if id(p) not in self._lost)
            self._drop("db_error", lost, exc)
            self._reset_connection()
            return
        finally:
            self._lost.clear()
        for row in new_images:
            if row.stored:
                self._remember_stored(row)
        with self._lock:
            self.counters.written += len(rows)
            self.counters.images_written += len(new_images)
            self.counters.bytes_on_disk += sum(r.bytes for r in new_images if r.stored)
        try:
            self._prune(conn)
        except Exception:  # pruning retries after the next batch; the records are safe
            log.warning("input log pruning failed", exc_info=True)

    def _collect(self, conn: sqlite3.Connection, batch: list[Pending]
                 ) -> tuple[dict[str, StoredImage], list[db.PredictionRow]]:
        """Store each new image; the rows of a request whose image failed are dropped."""
        images: dict[str, StoredImage] = {}
        rows: list[db.PredictionRow] = []
        for pending in batch:
            try:
                stored = [self._store_image(conn, images, inst.data) for inst in pending.instances]
            except BlobStoreError as exc:
                self._drop("store_error", pending.records, exc)
                self._lost.add(id(pending))
                continue
            for image in stored:
                images.setdefault(image.row.sha256, image)
            rows.extend(_prediction_rows(pending, [s.row for s in stored]))
            self._remember_labels(conn, pending.results)
        return images, rows

    def _store_image(self, conn: sqlite3.Connection, seen: dict[str, StoredImage],
                     data: bytes) -> StoredImage:
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:
            return StoredImage(seen[sha].row, seen[sha].new)
        cached = self._stored.get(sha)
        if cached is not None:
            self._stored.move_to_end(sha)
            return StoredImage(cached, False)
        known = db.known_image(conn, sha)
        if known is not None and (known["stored"] or self.settings.metadata_only):
            row = db.ImageRow(*(known[k] for k in db.ImageRow.__dataclass_fields__))
            self._remember_stored(row)
            return StoredImage(row, False)
        fmt, width, height = sniff(data)
        now = db.utc_now()
        key = image_key(sha, fmt)
        stored = 0
        if not self.settings.metadata_only:
            self.store.put_if_absent(key, data)
            stored = 1
        first_seen = known["first_seen"] if known is not None else now
        row = db.ImageRow(sha, key, fmt, width, height, len(data), first_seen, stored,
                          now if stored else None)
        return StoredImage(row, True)

    def _remember_stored(self, row: db.ImageRow) -> None:
        self._stored[row.sha256] = row
        if len(self._stored) > STORED_CACHE:
            self._stored.popitem(last=False)

    def _remember_labels(self, conn: sqlite3.Connection, results: dict[str, ModelResult]) -> None:
        """Keep each (model, version)'s labels, so feedback is checked against the right ones."""
        if self.labels_for is None:
            return
        for result in results.values():
            pair = (result.model, result.version)
            if pair in self._labels_saved:
                continue
            if not db.has_labels(conn, *pair):
                try:
                    db.save_labels(conn, *pair, list(self.labels_for(result.model)))
                except Exception as exc:  # e.g. the model was swapped out meanwhile
                    log.info("labels of %s v%d not saved: %s", *pair, exc)
                    continue
            self._labels_saved.add(pair)

    def _prune(self, conn: sqlite3.Connection) -> None:
        """Delete the oldest images while over ``max_disk_bytes``; their records stay."""
        limit = self.settings.max_disk_bytes
        while self.counters.bytes_on_disk > limit:
            victims = []
            excess = self.counters.bytes_on_disk - limit
            for row in db.oldest_stored(conn):
                victims.append(row)
                excess -= row["bytes"]
                if excess <= 0:
                    break
            if not victims:
                return
            # Marked first: a crash before the delete leaves an orphan file, never a record
            # that points at bytes that are gone.
            db.mark_pruned(conn, [v["sha256"] for v in victims])
            for victim in victims:
                self._stored.pop(victim["sha256"], None)
            for victim in victims:
                try:
                    self.store.delete(victim["key"])
                except BlobStoreError as exc:
                    log.warning("pruned image %s not deleted: %s", victim["sha256"], exc)
            with self._lock:
                self.counters.bytes_on_disk -= sum(v["bytes"] for v in victims)
                self.counters.images_pruned += len(victims)

    # -- plumbing -----------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            return db.connect(self.dir)
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(f"The input log database in {self.dir} cannot be opened: {exc}",
                              "inputlog_unavailable") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
            with self._lock:
                self.counters.bytes_on_disk = db.bytes_stored(self._conn)
        return self._conn

    def _reset_connection(self) -> None:
        self._stored.clear()  # what the database holds is no longer known
        self._labels_saved.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _drain_as_dropped(self, reason: str) -> None:
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                return
            self._drop(reason, pending.records)
            self._queue.task_done()
            self._mark_done(pending.seq)

    def _drop(self, reason: str, records: int, error: Exception | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.counters.dropped[reason] += records
            total = self.counters.dropped[reason]
            due = now - self._last_drop_log.get(reason, -DROP_LOG_INTERVAL_S) >= DROP_LOG_INTERVAL_S
            if due:
                self._last_drop_log[reason] = now
        if due:  # the first drop at once, then a summary at most every DROP_LOG_INTERVAL_S
            detail = f": {getattr(error, 'message', None) or error}" if error else ""
            log.warning("input log dropped %d record(s) (%s, %d so far)%s", records, reason,
                        total, detail)

    def _describe_store(self) -> str:
        if self.settings.metadata_only:
            return "not kept (metadata_only)"
        if isinstance(self.store, S3BlobStore):
            return f"s3://{self.store.bucket}/{self.store.prefix}"
        return str(self.dir / "images")


def _prediction_rows(pending: Pending, images: list[db.ImageRow]) -> list[db.PredictionRow]:
    ctx = pending.context
    rows = []
    for result in pending.results.values():
        latency = result.timing_ms.get("total")
        for index, (inst, image, pred) in enumerate(zip(pending.instances, images,
                                                        result.predictions)):
            rows.append(db.PredictionRow(
                ctx.request_id, index, pending.time, ctx.route, ctx.client, ctx.api_key_id,
                result.model, result.version, pred.class_id, pred.label, pred.probability,
                json.dumps(pred.top_k), image.sha256, image.format, image.width, image.height,
                image.bytes, inst.x, inst.y, inst.crop, latency))
    return rows


def _check_owner(rows: list[sqlite3.Row], caller: Caller | None) -> None:
    """With API keys, feedback on another key's prediction needs an admin key."""
    if caller is None or caller[1]:
        return
    if any(row["api_key_id"] != caller[0] for row in rows):
        raise Forbidden("This prediction was made with another API key; only that key or an "
                        "admin key may give feedback on it.", "feedback_forbidden")


def _of_instance(rows: list[sqlite3.Row], request_id: str,
                 instance: int | None) -> list[sqlite3.Row]:
    """The records of image ``instance`` of the request (all of them for None)."""
    if instance is None:
        return rows
    count = 1 + max(row["instance"] for row in rows)
    if not 0 <= instance < count:
        raise InvalidInput(f"'instance' must be from 0 to {count - 1}: request {request_id!r} "
                           f"had {count} image(s); got {instance}.", "bad_parameter")
    return [row for row in rows if row["instance"] == instance]
