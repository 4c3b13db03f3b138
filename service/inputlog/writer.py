"""The input log's writer thread and its queue: the only writer of the records and images.

``put()`` only enqueues (the request path never waits on a disk or a bucket). The thread
takes what is queued in batches, stores each new image, then inserts the batch's records in
one transaction: a record is only inserted after its image is durably stored.
A shared database (PostgreSQL) that is down keeps its batch: the writer reconnects and retries
with a growing pause while the queue takes the records that keep coming, up to its bound.
Whatever cannot be written (queue full, store or database failing) is dropped, counted by
reason and logged -- never silently.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

from ..blobstore import BlobStoreError
from ..cluster.progress import WriterProgress
from ..config import InputLogSettings
from ..dataplane import Instance, ModelResult, RequestContext
from .database import Database, first_line
from .images import Images, StoredImage
from .records import (Connection, ImageRow, PredictionRow, bytes_stored, has_labels,
                      save_labels, utc_time, write_batch)

log = logging.getLogger("service.inputlog")

BATCH_MAX = 256            # queue items per transaction
POLL_S = 0.2               # how often an idle writer looks at the stop flag
LINGER_S = 0.02            # after the first queued record, wait this long for more
FLUSH_WAIT_S = 5.0         # flush()'s default, e.g. for feedback on a still-queued request
DROP_LOG_INTERVAL_S = 10.0  # repeated drops of one reason are summarised this often
RECOUNT_S = 10.0           # in a cluster, re-read the bytes stored (all workers') this often
RETRY_FIRST_S = 0.25       # a database that is down: the first pause before a retry...
RETRY_MAX_S = 4.0          # ...doubling up to this
LabelsFor = Callable[[str], list[str]]  # a served model's labels, by model name


@dataclass(frozen=True, slots=True)
class Pending:
    """One successful predict call, as enqueued by ``put()``: references to the request's
    own objects (nobody changes them once predicted), nothing copied or formatted."""

    time: float  # time.time() of the prediction
    context: RequestContext
    instances: list[Instance]
    results: dict[str, ModelResult]
    seq: int = 0  # order of enqueueing, for flush()

    @property
    def records(self) -> int:
        return len(self.instances) * len(self.results)


@dataclass
class Counters:
    written: int = 0            # prediction records committed
    images_written: int = 0     # image files/objects written (duplicates are not)
    images_pruned: int = 0
    database_errors: int = 0    # failed attempts at a shared database (each batch retried)
    dropped: Counter = field(default_factory=Counter)  # records lost, by reason
    bytes_on_disk: int = 0


class Writer:
    """The queue, the thread that empties it, and what was written or lost."""

    def __init__(self, settings: InputLogSettings, images: Images, database: Database,
                 labels_for: LabelsFor | None = None, progress: WriterProgress | None = None):
        self.settings = settings
        self.db = database
        self.progress = progress  # in a cluster: where the other workers see how far it got
        self.dir = Path(settings.dir)
        self.images = images
        self.labels_for = labels_for
        self.counters = Counters()
        self._queue: queue.Queue[Pending] = queue.Queue(settings.queue_size or 1)
        self._lock = threading.Lock()     # guards counters and drop-log times
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None  # the writer thread's own
        self._last_drop_log: dict[str, float] = {}
        self._lost: set[int] = set()      # ids of this batch's requests already counted as dropped
        self._seq = itertools.count(1)    # next() is atomic: put() needs no lock
        self._last_queued = 0             # the newest seq put on the queue
        self._done_upto = 0               # every seq up to this is written or dropped
        self._done = threading.Condition()
        self._queued_lock = threading.Lock()
        self._in_hand = 0                 # queue items taken by the thread, not yet written
        # The (model, version) pairs whose labels are saved: a busy server's repeated
        # models cost no query.
        self._labels_saved: set[tuple[str, int]] = set()
        self._disk_counted_at = 0.0

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._connection()
        except Exception as exc:  # predictions go on; the writer tries again with each batch
            log.error("The input log database %s cannot be opened (%s); records %s until it "
                      "can be", self.db.describe(), exc, "wait in the queue" if
                      self.db.transient else "will be dropped")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="inputlog-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Write everything still queued (up to ``timeout``), then stop the thread."""
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

    def flush(self, timeout: float = FLUSH_WAIT_S) -> bool:
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
        return self.progress is None or self.progress.wait_for_others(deadline)

    def behind(self) -> bool:
        """Some queued records (of this worker, or of another) are not written yet."""
        return self._done_upto < self._last_queued or \
            (self.progress is not None and self.progress.others_behind())

    # -- the request side ---------------------------------------------------------------------
    def put(self, context: RequestContext, instances: list[Instance],
            results: dict[str, ModelResult]) -> None:
        pending = Pending(time.time(), context, instances, results, next(self._seq))
        if self._thread is None:
            self._drop("not_running", pending.records)
            return
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._drop("queue_full", pending.records)
            return
        with self._queued_lock:
            self._last_queued = max(self._last_queued, pending.seq)
            if self.progress is not None:
                self.progress.queued(self._last_queued)

    def stats(self) -> dict[str, Any]:
        """written, images_written, images_pruned, dropped_by_reason, queue_depth, bytes_on_disk."""
        with self._lock:
            c = self.counters
            return {"written": c.written, "images_written": c.images_written,
                    "images_pruned": c.images_pruned, "dropped_by_reason": dict(c.dropped),
                    "database_errors": c.database_errors,
                    "queue_depth": self._queue.qsize() + self._in_hand,
                    "bytes_on_disk": c.bytes_on_disk}

    # -- the thread ---------------------------------------------------------------------------
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
            self._in_hand = len(batch)
            try:
                written = self._write(batch)
            finally:
                self._in_hand = 0
                for _ in batch:
                    self._queue.task_done()
                self._mark_done(batch[-1].seq)
            if not written:  # stopping, and the database is down: the rest cannot be either
                self._drain_as_dropped("db_error")
                return

    def _mark_done(self, seq: int) -> None:
        """Everything queued up to ``seq`` is written or dropped (the queue is in order)."""
        with self._done:
            self._done_upto = max(self._done_upto, seq)
            if self.progress is not None:
                self.progress.done(self._done_upto)
            self._done.notify_all()

    def _write(self, batch: list[Pending]) -> bool:
        """Write ``batch``, retrying while the database is down; False: gave up, stopping."""
        pause = RETRY_FIRST_S
        try:
            while True:
                try:
                    self._commit(batch)
                    return True
                except self.db.transient as exc:
                    self._reset_connection()
                    if self._stopping.is_set():
                        self._drop("db_error", self._unlost(batch), exc)
                        return False
                    self._database_down(exc, pause)
                    self._stopping.wait(pause)
                    pause = min(2 * pause, RETRY_MAX_S)
                except Exception as exc:  # the writer must survive anything one batch does
                    self._drop("db_error", self._unlost(batch), exc)
                    self._reset_connection()
                    return True
        finally:
            self._lost.clear()

    def _unlost(self, batch: list[Pending]) -> int:
        """The records of ``batch`` not yet counted as dropped."""
        return sum(p.records for p in batch if id(p) not in self._lost)

    def _commit(self, batch: list[Pending]) -> None:
        conn = self._connection()
        images, rows = self._collect(conn, batch)
        new_images = [s.row for s in images.values() if s.new]
        write_batch(conn, new_images, rows)
        for row in new_images:
            if row.stored:
                self.images.remember(row)
        with self._lock:
            self.counters.written += len(rows)
            self.counters.images_written += len(new_images)
            self.counters.bytes_on_disk += sum(r.bytes for r in new_images if r.stored)
        try:
            self._prune(conn)
        except Exception:  # pruning retries after the next batch; the records are safe
            log.warning("input log pruning failed", exc_info=True)

    def _database_down(self, exc: Exception, pause: float) -> None:
        """Count a failed attempt; log the first of an outage, then every DROP_LOG_INTERVAL_S."""
        with self._lock:
            self.counters.database_errors += 1
            due = self._log_due("db_down")
        if due:
            log.warning("input log database %s is unavailable (%s): %d record(s) wait in the "
                        "queue (bound %d); retrying in %.2f s", self.db.describe(),
                        first_line(exc), self._queue.qsize() + self._in_hand,
                        self.settings.queue_size, pause)

    def _log_due(self, what: str) -> bool:
        """Whether a line about ``what`` may be logged now (under ``_lock``): the first at
        once, then one every DROP_LOG_INTERVAL_S."""
        now = time.monotonic()
        if now - self._last_drop_log.get(what, -DROP_LOG_INTERVAL_S) < DROP_LOG_INTERVAL_S:
            return False
        self._last_drop_log[what] = now
        return True

    def _collect(self, conn: Connection, batch: list[Pending]
                 ) -> tuple[dict[str, StoredImage], list[PredictionRow]]:
        """Store each new image; the rows of a request whose image failed are dropped."""
        images: dict[str, StoredImage] = {}
        rows: list[PredictionRow] = []
        for pending in batch:
            if id(pending) in self._lost:  # dropped by an earlier attempt at this batch
                continue
            try:
                stored = [self.images.store_image(conn, images, inst.data)
                          for inst in pending.instances]
            except BlobStoreError as exc:
                self._drop("store_error", pending.records, exc)
                self._lost.add(id(pending))
                continue
            for image in stored:
                images.setdefault(image.row.sha256, image)
            rows.extend(prediction_rows(pending, [s.row for s in stored]))
            self._remember_labels(conn, pending.results)
        return images, rows

    def _remember_labels(self, conn: Connection, results: dict[str, ModelResult]) -> None:
        """Keep each (model, version)'s labels, so feedback is checked against the right ones."""
        if self.labels_for is None:
            return
        for result in results.values():
            pair = (result.model, result.version)
            if pair in self._labels_saved:
                continue
            if not has_labels(conn, *pair):
                try:
                    save_labels(conn, *pair, list(self.labels_for(result.model)))
                except Exception as exc:  # e.g. the model was swapped out meanwhile
                    log.info("labels of %s v%d not saved: %s", *pair, exc)
                    continue
            self._labels_saved.add(pair)

    def _prune(self, conn: Connection) -> None:
        """Delete the oldest images while over ``max_disk_bytes``; their records stay."""
        limit = self.settings.max_disk_bytes
        now = time.monotonic()
        if (self.progress is not None or self.db.shared) and \
                now - self._disk_counted_at >= RECOUNT_S:
            # Other workers (or replicas) write images too: the database's sum is the truth.
            self._disk_counted_at = now
            with self._lock:
                self.counters.bytes_on_disk = bytes_stored(conn)
        while self.counters.bytes_on_disk > limit:
            pruned = self.images.prune_oldest(conn, self.counters.bytes_on_disk - limit)
            if not pruned:
                return
            with self._lock:
                self.counters.bytes_on_disk -= sum(v["bytes"] for v in pruned)
                self.counters.images_pruned += len(pruned)

    # -- plumbing -----------------------------------------------------------------------------
    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.db.connect()
            try:
                stored = bytes_stored(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            with self._lock:
                self.counters.bytes_on_disk = stored
        return self._conn

    def _reset_connection(self) -> None:
        self.images.forget()  # what the database holds is no longer known
        self._labels_saved.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a connection that failed may fail to close too
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
        with self._lock:
            self.counters.dropped[reason] += records
            total = self.counters.dropped[reason]
            due = self._log_due(reason)
        if due:  # the first drop at once, then a summary at most every DROP_LOG_INTERVAL_S
            detail = f": {getattr(error, 'message', None) or error}" if error else ""
            log.warning("input log dropped %d record(s) (%s, %d so far)%s", records, reason,
                        total, detail)


def prediction_rows(pending: Pending, images: list[ImageRow]) -> list[PredictionRow]:
    """One row per (instance, model) of ``pending``; ``images`` are its instances' rows."""
    ctx = pending.context
    when = utc_time(pending.time)
    rows = []
    for result in pending.results.values():
        latency = result.timing_ms.get("total")
        for index, (inst, image, pred) in enumerate(zip(pending.instances, images,
                                                        result.predictions)):
            rows.append(PredictionRow(
                ctx.request_id, index, when, ctx.route, ctx.client, ctx.api_key_id,
                result.model, result.version, pred.class_id, pred.label, pred.probability,
                orjson.dumps(pred.top_k).decode(), image.sha256, image.format, image.width,
                image.height, image.bytes, inst.x, inst.y, inst.crop, latency))
    return rows
