"""Token-bucket rate limits and in-flight caps per client (an API key id or an address).

Protocol-neutral: callers say who is asking and with which limits; a refusal is a
:class:`~service.errors.RateLimited` (or :class:`~service.errors.Overloaded` for too many
requests at once) carrying the seconds until the request could succeed.

One interface, interchangeable backends. :class:`Limiter` is what callers use;
:class:`BucketLimiter` writes the admission policy, its arithmetic and its messages once, over a
backend's state; :class:`RateLimiter` keeps that state in this process's memory,
``shared_limits.SharedRateLimiter`` in a SQLite file every worker of the machine shares, and
``redis_limits.RedisRateLimiter`` in Redis, shared by every replica of the service.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Protocol, TypeVar

from .. import metrics
from ..config import RateLimits
from ..errors import Overloaded, RateLimited

log = logging.getLogger("service.access")

MAX_CLIENTS = 100_000  # buckets kept; beyond this, full (idle) buckets are forgotten
REQUESTS, IMAGES = "requests", "images"  # the two kinds of bucket a client has
LOG_EVERY_S = 60.0      # at most one log line this often while a backend fails

Clock = Callable[[], float]
T = TypeVar("T")


class TokenBucket:
    """``rate`` tokens a second up to ``capacity``; starts full."""

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float | None = None,
                 tokens: float | None = None):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity if tokens is None else tokens
        self.stamp = time.monotonic() if now is None else now

    def take(self, cost: float, now: float) -> float:
        """Take ``cost`` tokens and return 0, or take nothing and return the seconds to wait."""
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(now, self.stamp)
        if cost <= self.tokens:
            self.tokens -= cost
            return 0.0
        if cost > self.capacity:  # could never succeed; retrying soon will not help
            return math.inf
        return (cost - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.stamp) * self.rate >= self.capacity


class Limiter(Protocol):
    """What ``web/access.py`` and the data plane call; every backend answers the same."""

    def enter(self, client: str, limits: RateLimits) -> bool:
        """Admit one request or raise; True when it now counts in flight (then ``leave``)."""

    def leave(self, client: str) -> None:
        """The request ``enter`` counted has finished."""

    def charge_images(self, client: str, limits: RateLimits, count: int,
                      batch_max: int) -> None:
        """Take ``count`` image tokens, or raise."""


class BucketLimiter:
    """The admission policy, written once over a backend's state.

    A backend gives :meth:`_atomically` (run a step, given the time, as one indivisible
    update of the state) and the primitives the steps use: :meth:`_take` (one bucket),
    :meth:`_claim` and :meth:`_release` (a slot of a client's in-flight cap). Each primitive
    is one indivisible update by itself, so a backend that cannot hold a step's two together
    (Redis: one script each) still answers the same: a refusal by the second keeps the
    first's token, as it does everywhere.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock

    def enter(self, client: str, limits: RateLimits) -> bool:
        """Admit one request (rate and concurrency), or raise.

        Returns True when the request counts towards the in-flight cap: pair it with
        :meth:`leave`. Without a request rate or an in-flight cap the state is not touched.
        """
        if not (limits.requests_per_s or limits.max_in_flight):
            return False

        rate, cap = limits.requests_per_s, limits.max_in_flight
        burst = limits.requests_burst or max(1.0, rate)

        def step(now: float) -> bool:
            wait, busy = self._admit(client, rate, burst, cap, now)
            if wait:
                raise _limited(f"more than {rate:g} requests a second", wait)
            if not cap:
                return False
            if busy >= cap:
                raise Overloaded(f"This client already has {busy} requests in progress, its "
                                 "limit; wait for one to finish.", "too_many_in_flight")
            return True

        return self._atomically(step, failed=False)

    def leave(self, client: str) -> None:
        self._atomically(lambda now: self._release(client, now), failed=None)

    def charge_images(self, client: str, limits: RateLimits, count: int, batch_max: int) -> None:
        """Take ``count`` image tokens, or raise."""
        if not limits.images_per_s:
            return
        burst = limits.images_burst or max(float(batch_max), limits.images_per_s)
        wait = self._atomically(
            lambda now: self._take(IMAGES, client, limits.images_per_s, burst, count, now),
            failed=0.0)
        if wait:
            raise _limited(f"more than {limits.images_per_s:g} images a second"
                           + (f" (this request holds {count}, more than the burst of "
                              f"{burst:g})" if math.isinf(wait) else ""), wait)

    # -- what a backend gives --------------------------------------------------------------
    def _atomically(self, step: Callable[[float], T], failed: T) -> T:
        """``step(now)`` as one update; a refusal it raises keeps what it changed. ``failed``
        is the answer of a backend that fails open when its state cannot be reached."""
        raise NotImplementedError

    def _take(self, kind: str, client: str, rate: float, burst: float, cost: float,
              now: float) -> float:
        """:meth:`TokenBucket.take` on the client's bucket of ``kind``; a bucket whose rate or
        burst changed starts afresh (full)."""
        raise NotImplementedError

    def _claim(self, client: str, cap: int, now: float) -> int:
        """Count one more request of ``client`` in flight unless ``cap`` already are; return
        how many were in flight before (``>= cap``: nothing was counted)."""
        raise NotImplementedError

    def _admit(self, client: str, rate: float, burst: float, cap: int,
               now: float) -> tuple[float, int]:
        """A request's token (when ``rate``), then its in-flight slot (when ``cap`` and the
        token was taken): (seconds to wait, or 0; in flight before). A backend may do both
        at once (Redis: one script, one round trip)."""
        wait = self._take(REQUESTS, client, rate, burst, 1, now) if rate else 0.0
        if wait or not cap:
            return wait, 0
        return 0.0, self._claim(client, cap, now)

    def _release(self, client: str, now: float) -> None:
        """Count one request fewer in flight (never fewer than 0)."""
        raise NotImplementedError


class RateLimiter(BucketLimiter):
    """Buckets and in-flight counts for every client in this process, behind one short-held
    lock."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        super().__init__(clock)
        self._lock = threading.Lock()
        self._buckets: dict[str, dict[str, TokenBucket]] = {REQUESTS: {}, IMAGES: {}}
        self._in_flight: dict[str, int] = {}

    def _atomically(self, step: Callable[[float], T], failed: T) -> T:
        with self._lock:
            return step(self._clock())

    def _take(self, kind: str, client: str, rate: float, burst: float, cost: float,
              now: float) -> float:
        buckets = self._buckets[kind]
        bucket = buckets.get(client)
        if bucket is None or (bucket.rate, bucket.capacity) != (rate, burst):
            if len(buckets) >= MAX_CLIENTS:
                self._forget_idle(buckets, now)
            bucket = buckets[client] = TokenBucket(rate, burst, now)
        return bucket.take(cost, now)

    def _claim(self, client: str, cap: int, now: float) -> int:
        busy = self._in_flight.get(client, 0)
        if busy < cap:
            self._in_flight[client] = busy + 1
        return busy

    def _release(self, client: str, now: float) -> None:
        busy = self._in_flight.get(client, 0) - 1
        if busy > 0:
            self._in_flight[client] = busy
        else:
            self._in_flight.pop(client, None)

    @staticmethod
    def _forget_idle(buckets: dict[str, TokenBucket], now: float) -> None:
        """A full bucket is the same as no bucket: dropping it changes nobody's limit."""
        for client in [c for c, b in buckets.items() if b.full(now)]:
            del buckets[client]


class FailureReport:
    """A backend's failures: each counted (``digits_ratelimit_backend_errors_total``), and
    logged at most once per ``LOG_EVERY_S`` with the count since the last line -- a backend
    that is down fails every request, and one line a request would drown the log."""

    def __init__(self, backend: str):
        self._counter = metrics.ratelimit_backend_errors(backend)
        self._lock = threading.Lock()
        self._failures = 0       # since the last log line
        self._logged_at: float | None = None

    def failed(self, what: str, exc: BaseException, meanwhile: str) -> None:
        """Count one failure of ``what`` (e.g. "Rate limits in Redis at ...") and maybe log
        it, saying what is done ``meanwhile``."""
        self._counter.inc()
        now = time.monotonic()  # the real clock: the log's interval is not the limits' time
        with self._lock:
            self._failures += 1
            if self._logged_at is not None and now - self._logged_at < LOG_EVERY_S:
                return
            failures, self._logged_at, self._failures = self._failures, now, 0
        log.warning("%s failed (%s: %s; %d failure(s) since the last report): %s meanwhile",
                    what, type(exc).__name__, exc, failures, meanwhile)


def _limited(what: str, wait: float) -> RateLimited:
    if math.isinf(wait):
        return RateLimited(f"Rate limit: {what}; split the request.", retry_after=60,
                           code="rate_limited")
    return RateLimited(f"Rate limit: {what}; retry after the Retry-After seconds.",
                       retry_after=math.ceil(wait))
