"""Token-bucket rate limits and in-flight caps per client (an API key id or an address).

Protocol-neutral: callers say who is asking and with which limits; a refusal is a
:class:`~service.errors.RateLimited` (or :class:`~service.errors.Overloaded` for too many
requests at once) carrying the seconds until the request could succeed.
"""
from __future__ import annotations

import math
import threading
import time

from ..config import RateLimits
from ..errors import Overloaded, RateLimited

MAX_CLIENTS = 100_000  # buckets kept; beyond this, full (idle) buckets are forgotten


class TokenBucket:
    """``rate`` tokens a second up to ``capacity``; starts full."""

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, rate: float, capacity: float, now: float | None = None):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
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


class RateLimiter:
    """Buckets and in-flight counts for every client, behind one short-held lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, TokenBucket] = {}
        self._images: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    def enter(self, client: str, limits: RateLimits) -> None:
        """Admit one request (rate and concurrency), or raise; pair with ``leave``."""
        with self._lock:
            if limits.requests_per_s:
                burst = limits.requests_burst or max(1.0, limits.requests_per_s)
                wait = self._take(self._requests, client, limits.requests_per_s, burst, 1)
                if wait:
                    raise _limited(f"more than {limits.requests_per_s:g} requests a second", wait)
            busy = self._in_flight.get(client, 0)
            if limits.max_in_flight and busy >= limits.max_in_flight:
                raise Overloaded(f"This client already has {busy} requests in progress, its "
                                 "limit; wait for one to finish.", "too_many_in_flight")
            self._in_flight[client] = busy + 1

    def leave(self, client: str) -> None:
        with self._lock:
            busy = self._in_flight.get(client, 0) - 1
            if busy > 0:
                self._in_flight[client] = busy
            else:
                self._in_flight.pop(client, None)

    def charge_images(self, client: str, limits: RateLimits, count: int, batch_max: int) -> None:
        """Take ``count`` image tokens, or raise."""
        if not limits.images_per_s:
            return
        burst = limits.images_burst or max(float(batch_max), limits.images_per_s)
        with self._lock:
            wait = self._take(self._images, client, limits.images_per_s, burst, count)
        if wait:
            raise _limited(f"more than {limits.images_per_s:g} images a second"
                           + (f" (this request holds {count}, more than the burst of "
                              f"{burst:g})" if math.isinf(wait) else ""), wait)

    def _take(self, buckets: dict[str, TokenBucket], client: str, rate: float, burst: float,
              cost: float) -> float:
        now = time.monotonic()
        bucket = buckets.get(client)
        if bucket is None or (bucket.rate, bucket.capacity) != (rate, burst):
            if len(buckets) >= MAX_CLIENTS:
                self._forget_idle(buckets, now)
            bucket = buckets[client] = TokenBucket(rate, burst, now)
        return bucket.take(cost, now)

    @staticmethod
    def _forget_idle(buckets: dict[str, TokenBucket], now: float) -> None:
        """A full bucket is the same as no bucket: dropping it changes nobody's limit."""
        for client in [c for c, b in buckets.items() if b.full(now)]:
            del buckets[client]


def _limited(what: str, wait: float) -> RateLimited:
    if math.isinf(wait):
        return RateLimited(f"Rate limit: {what}; split the request.", retry_after=60,
                           code="rate_limited")
    return RateLimited(f"Rate limit: {what}; retry after the Retry-After seconds.",
                       retry_after=math.ceil(wait))
