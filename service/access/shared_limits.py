"""Rate limits and in-flight caps that every worker process of the machine shares.

:class:`SharedRateLimiter` is :class:`~.rate_limit.RateLimiter` with its state in a small
SQLite file in the cluster's run directory instead of one process's memory: with 2 workers, a
key limited to 5 requests a second gets 5, not 10. The policy, the bucket arithmetic and the
refusals (messages, ``Retry-After``) are the ones of ``rate_limit.py``; only the state is here.

- ``buckets``: a row per (kind, client) -- rate, capacity, tokens and the stamp of the last
  update. Stamps are ``time.monotonic()``: on Linux that is CLOCK_MONOTONIC, one clock for the
  whole system (seconds since boot), so stamps written by one process are comparable with the
  time read by another. (A file outliving a reboot would hold stamps from another boot; the
  run directory is made afresh by each cluster.)
- ``in_flight``: a count per (client, worker), summed over the workers for the cap. A worker
  killed with ``kill -9`` never says ``leave``; :meth:`SharedRateLimiter.forget_worker`
  deletes its rows when its slot's replacement starts (:func:`make_limiter` does it).

Each call is one short ``BEGIN IMMEDIATE`` ... ``COMMIT`` on this thread's own connection (WAL,
``synchronous=OFF``: throwaway run state, nothing to make durable), behind a per-process lock so
that only the workers, not every thread, contend for SQLite's write lock; ``busy_timeout`` makes
contenders wait instead of seeing ``database is locked``. The clock is read inside the
transaction, so updates are applied in the order of their stamps.

Fails open: when the database cannot be reached (any ``sqlite3.Error``), the request is
admitted unchecked, the failure counted (``digits_ratelimit_backend_errors_total``) and logged
at most once a minute, with a count. A broken limiter must not answer 500 to every request,
and these limits protect capacity, not secrets.

:func:`make_limiter` picks the backend of a process: this file for a cluster's workers, or
Redis (``redis_limits.py``) for every replica when ``[ratelimit] redis_url`` is set.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from ..config import RateLimitSettings
from ..errors import ServiceError
from .rate_limit import BucketLimiter, Clock, FailureReport, Limiter, RateLimiter, TokenBucket
from .redis_limits import LEASE_S, RedisRateLimiter

if TYPE_CHECKING:
    from ..cluster.identity import Worker

DB_NAME = "ratelimit.sqlite"
BUSY_TIMEOUT_S = 10.0   # a worker waits this long for another's transaction (each takes µs)
PRUNE_EVERY = 4096      # bucket updates in a process between deletions of full buckets
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    kind     TEXT NOT NULL,      -- 'requests' or 'images'
    client   TEXT NOT NULL,      -- an API key id, or an address without keys
    rate     REAL NOT NULL,      -- tokens a second
    capacity REAL NOT NULL,      -- the burst
    tokens   REAL NOT NULL,
    stamp    REAL NOT NULL,      -- time.monotonic() of the last update (system-wide)
    PRIMARY KEY (kind, client)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS in_flight (
    client TEXT NOT NULL,
    worker TEXT NOT NULL,        -- 'worker-<slot>'
    n      INTEGER NOT NULL,     -- > 0; a row at 0 is deleted
    PRIMARY KEY (client, worker)
) WITHOUT ROWID;
"""

_LIVE: weakref.WeakSet[SharedRateLimiter] = weakref.WeakSet()


class SharedRateLimiter(BucketLimiter):
    """The limiter of one worker (``worker``, e.g. ``"worker-0"``) over the file ``path``."""

    prune_every = PRUNE_EVERY

    def __init__(self, path: Path, worker: str, clock: Clock = time.monotonic):
        super().__init__(clock)
        self.path = Path(path)
        self.worker = worker
        self._reset()
        self._updates = 0        # bucket updates by this process, for pruning
        self._report = FailureReport("sqlite")
        self._create()           # a database that cannot be made fails at start-up, loudly
        _LIVE.add(self)

    def forget_worker(self, worker: str) -> None:
        """Delete ``worker``'s in-flight counts (a dead worker never left; its slot's
        replacement calls this before it serves)."""
        self._atomically(lambda now: self._db().execute(
            "DELETE FROM in_flight WHERE worker = ?", (worker,)), failed=None)

    # -- the backend of BucketLimiter ----------------------------------------------------------
    def _atomically(self, step: Callable[[float], T], failed: T) -> T:
        with self._lock:
            try:
                db = self._db()
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                return self._failed(exc, failed)
            try:
                result = step(self._clock())
            except ServiceError:  # a refusal keeps what its step changed (a token taken)
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._failed(exc, None)
                raise
            except sqlite3.Error as exc:
                return self._failed(exc, failed)
            except BaseException:
                self._rollback()
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                return self._failed(exc, failed)
            return result

    def _take(self, kind: str, client: str, rate: float, burst: float, cost: float,
              now: float) -> float:
        db = self._db()
        row = db.execute("SELECT rate, capacity, tokens, stamp FROM buckets "
                         "WHERE kind = ? AND client = ?", (kind, client)).fetchone()
        if row is None or (row[0], row[1]) != (rate, burst):
            bucket = TokenBucket(rate, burst, now)
        else:
            bucket = TokenBucket(rate, burst, now=row[3], tokens=row[2])
        wait = bucket.take(cost, now)
        if not wait:  # a refusal took nothing: its refill is computed again next time
            db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?, ?, ?)",
                       (kind, client, rate, burst, bucket.tokens, bucket.stamp))
        self._updates += 1
        if self._updates % self.prune_every == 0:
            self._forget_idle(now)
        return wait

    def _claim(self, client: str, cap: int, now: float) -> int:
        busy = self._busy(client)
        if busy < cap:
            self._add_busy(client, 1)
        return busy

    def _release(self, client: str, now: float) -> None:
        self._add_busy(client, -1)

    def _busy(self, client: str) -> int:
        return self._db().execute("SELECT coalesce(sum(n), 0) FROM in_flight WHERE client = ?",
                                  (client,)).fetchone()[0]

    def _add_busy(self, client: str, delta: int) -> None:
        """Count ``delta`` more requests in flight (never fewer than 0)."""
        db, key = self._db(), (client, self.worker)
        if delta > 0:
            db.execute("INSERT INTO in_flight VALUES (?, ?, ?) ON CONFLICT (client, worker) "
                       "DO UPDATE SET n = n + excluded.n", (*key, delta))
        elif db.execute("DELETE FROM in_flight WHERE client = ? AND worker = ? AND n <= ?",
                        (*key, -delta)).rowcount == 0:
            db.execute("UPDATE in_flight SET n = n + ? WHERE client = ? AND worker = ?",
                       (delta, *key))

    def _forget_idle(self, now: float) -> None:
        """A full bucket is the same as no bucket: dropping it changes nobody's limit."""
        self._db().execute("DELETE FROM buckets WHERE tokens + (? - stamp) * rate >= capacity",
                           (now,))

    # -- connections ---------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (opened on its first call)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            db.execute("PRAGMA synchronous=OFF")
            self._local.db = db
        return db

    def _create(self) -> None:
        db = self._db()
        for attempt in range(20):  # the first opens of a new file can race on journal_mode
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.05)

    def _reset(self) -> None:
        """No connection or lock yet in this process (also in a child forked from one that had
        them: SQLite connections must not be used across a fork)."""
        self._local = threading.local()
        self._lock = threading.Lock()

    def _rollback(self) -> None:
        """Undo what this thread began; a connection that cannot is dropped (reopened next)."""
        db = getattr(self._local, "db", None)
        if db is None:
            return
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            self._local.db = None
            try:
                db.close()
            except sqlite3.Error:
                pass

    def _failed(self, exc: sqlite3.Error, answer: T) -> T:
        """Fail open: roll back, count and report the failure, and answer ``answer``."""
        self._rollback()
        self._report.failed(f"Shared rate limits in {self.path}", exc,
                            "admitting requests unchecked")
        return answer


def _after_fork_in_child() -> None:
    for limiter in list(_LIVE):
        limiter._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def make_limiter(worker: Worker | None, settings: RateLimitSettings | None = None, *,
                 lease_s: float = LEASE_S, replica: str | None = None) -> Limiter:
    """The limiter of this process.

    With ``settings.redis_url``: Redis, shared by every replica and worker (``replica`` names
    this process's in-flight leases, held ``lease_s``; default host:pid). Else its own memory
    when it is the whole service, or the file in the cluster's run directory, shared with the
    other workers: a worker starts by forgetting its slot's in-flight counts, inheriting
    nothing from a dead predecessor."""
    if settings is not None and settings.redis_url:
        return RedisRateLimiter.from_url(settings.redis_url, replica,
                                         timeout_s=settings.redis_timeout_s,
                                         fail_open=settings.fail_open, lease_s=lease_s)
    if worker is None:
        return RateLimiter()
    limiter = SharedRateLimiter(worker.run_dir / DB_NAME, f"worker-{worker.slot}")
    limiter.forget_worker(limiter.worker)
    return limiter
