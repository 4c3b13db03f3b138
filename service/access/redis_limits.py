"""Rate limits and in-flight caps in Redis, shared by every replica of the service.

:class:`RedisRateLimiter` is :class:`~.rate_limit.RateLimiter` with its state in Redis: with 3
replicas (machines, pods, or a cluster's workers), a key limited to 5 requests a second gets 5,
not 15. The policy, the bucket arithmetic and the refusals (messages, ``Retry-After``) are the
ones of ``rate_limit.py``; only the state is here. Every key starts with ``digits:rl:``:

- ``digits:rl:requests:<client>`` and ``digits:rl:images:<client>``: a hash per bucket (rate,
  capacity, tokens, stamp), updated by one Lua script (``TAKE``): refill, take, write -- one
  round trip, atomic however many replicas call at once. Its TTL is the time the bucket
  takes to refill, plus a minute: a full bucket is the same as no bucket, so an idle
  client's bucket vanishes by itself.
- ``digits:rl:in_flight:<client>``: a sorted set of the client's requests in flight, each a
  member ``<replica>:<n>`` scored by the end of its lease (now + ``lease_s``). The ``CLAIM``
  script drops expired leases, counts, and adds one below the cap; ``leave`` removes the
  replica's member. A replica killed with ``kill -9`` never leaves: its leases simply expire.
- A request with both a rate and a cap runs ``ADMIT`` (the two in one script): one round trip
  to enter, one to leave -- each costs the request thread ~60 µs of redis-py.

The clock is given (default ``time.time``, the wall clock: replicas on different machines share
it through NTP, unlike ``time.monotonic``); stamps and leases are in its seconds, so a test can
freeze it. Key TTLs are Redis's own seconds; the grace they add covers clocks a little apart.

Redis down or slow: every command has a short connect and read timeout (``[ratelimit]
redis_timeout_s``, 0.25 s) and is not retried, so a hung Redis holds a request a fraction of a
second, not its whole deadline. Then
``fail_open=True`` admits the request unchecked; ``False`` refuses it with 503
``ratelimit_unavailable`` (never a 500). Either way the failure is counted
(``digits_ratelimit_backend_errors_total{backend="redis"}``) and logged at most once a minute.
redis-py reconnects on the next command, and a script lost with a restarted Redis's memory
(NOSCRIPT) is loaded again by redis-py's ``Script`` (``register_script``), so limits apply
again by themselves, without a restart of the service. A restarted Redis starts empty: full
buckets, and no request in flight (those under way are no longer counted; they finish).
"""
from __future__ import annotations

import itertools
import math
import os
import socket
import threading
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..config import ServiceSettings
from ..errors import Unavailable
from .rate_limit import REQUESTS, BucketLimiter, Clock, FailureReport

PREFIX = "digits:rl:"
IN_FLIGHT = "in_flight"  # beside the bucket kinds, REQUESTS and IMAGES
TIMEOUT_S = 0.25         # connect and read: Redis answers in well under a millisecond
LEASE_S = 120.0          # an in-flight entry lasts at most this (a dead replica's expire)
GRACE_S = 60.0           # keys outlive what they hold by this much (clocks differ a little)
MAX_TTL_S = 30 * 86400   # however slow a bucket refills, its key goes within a month
RETRY_AFTER_S = 5        # when refusing without Redis: long enough for a restart
T = TypeVar("T")
FAILURES = (RedisError, OSError)  # OSError: anything redis-py might let through unwrapped

# The two updates, as Lua functions that each script below is made of.
# take(bucket, rate, capacity, cost, now, grace, max TTL in ms) -> the seconds to wait as a
# string ("0": taken; "inf": more than the capacity), as Lua numbers would be truncated to
# integers. The arithmetic is TokenBucket.take's, operation for operation, so every backend
# computes the same Retry-After. A bucket of other rate or capacity starts full.
# claim(leases, now, cap, member, its lease's end, the key's TTL in ms) -> how many were in
# flight before; below the cap, the member now counts too.
FUNCTIONS = """
local function take(key, rate_s, capacity_s, cost, now, grace, max_ttl)
  local rate, capacity = tonumber(rate_s), tonumber(capacity_s)
  cost, now = tonumber(cost), tonumber(now)
  local tokens, stamp = capacity, now
  local old = redis.call('HMGET', key, 'rate', 'capacity', 'tokens', 'stamp')
  if tonumber(old[1]) == rate and tonumber(old[2]) == capacity then
    tokens, stamp = tonumber(old[3]), tonumber(old[4])
  end
  tokens = math.min(capacity, tokens + math.max(0, now - stamp) * rate)
  stamp = math.max(now, stamp)
  if cost <= tokens then
    tokens = tokens - cost
    redis.call('HSET', key, 'rate', rate_s, 'capacity', capacity_s,
               'tokens', string.format('%.17g', tokens), 'stamp', string.format('%.17g', stamp))
    local ttl = math.ceil((capacity - tokens) / rate * 1000) + tonumber(grace)
    redis.call('PEXPIRE', key, string.format('%d', math.min(ttl, tonumber(max_ttl))))
    return '0'
  end
  if cost > capacity then
    return 'inf'
  end
  return string.format('%.17g', (cost - tokens) / rate)
end

local function claim(key, now, cap, member, ends, ttl)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local busy = redis.call('ZCARD', key)
  if busy < tonumber(cap) then
    redis.call('ZADD', key, ends, member)
    redis.call('PEXPIRE', key, ttl)
  end
  return busy
end
"""
TAKE = FUNCTIONS + "return take(KEYS[1], unpack(ARGV))"
CLAIM = FUNCTIONS + "return claim(KEYS[1], unpack(ARGV))"
# A request's token, then (if taken) its slot: KEYS = bucket, leases; ARGV = take's six
# arguments, then claim's cap, member, end, TTL. One round trip instead of two.
ADMIT = FUNCTIONS + """
local wait = take(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
if wait ~= '0' then
  return {wait, 0}
end
return {'0', claim(KEYS[2], ARGV[4], ARGV[7], ARGV[8], ARGV[9], ARGV[10])}
"""


class RedisRateLimiter(BucketLimiter):
    """The limiter of one replica over the Redis of ``client``.

    ``replica`` names its in-flight leases (None: this process, ``<host>:<pid>``, read at each
    lease: a daemon forks after its limiter is made); ``lease_s`` is how long one lasts, longer
    than any request (:func:`in_flight_lease`).
    """

    def __init__(self, client: redis.Redis, replica: str | None = None, *,
                 clock: Clock = time.time, fail_open: bool = True, lease_s: float = LEASE_S,
                 prefix: str = PREFIX, where: str = "Redis"):
        super().__init__(clock)
        self.redis = client
        self.replica = replica
        self.fail_open = fail_open
        self.lease_s = lease_s
        self.prefix = prefix
        self._where = f"Rate limits in {where}"  # for the log, without credentials
        self._meanwhile = ("admitting requests unchecked" if fail_open else
                           "refusing rate-limited requests with 503 (fail_open = False)")
        self._take_script = client.register_script(TAKE)
        self._claim_script = client.register_script(CLAIM)
        self._admit_script = client.register_script(ADMIT)
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._held: dict[str, list[str]] = {}  # this replica's leases by client, for leave
        self._report = FailureReport("redis")

    @classmethod
    def from_url(cls, url: str, replica: str | None = None, *, timeout_s: float = TIMEOUT_S,
                 **options: Any) -> RedisRateLimiter:
        """A limiter over ``url`` (redis://, rediss:// or unix://), each command given
        ``timeout_s`` to connect and as long to answer."""
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                      socket_timeout=timeout_s,
                                      retry=Retry(NoBackoff(), 0))  # one try: see above
        return cls(client, replica, where=f"Redis at {redacted(url)}", **options)

    def leave(self, client: str) -> None:
        """The request ``enter`` counted has finished. Never refuses (its answer is ready): a
        lease that could not be removed expires by itself."""
        try:
            self._release(client, self._clock())
        except FAILURES as exc:
            self._report.failed(self._where, exc, self._meanwhile)

    # -- the backend of BucketLimiter ----------------------------------------------------------
    def _atomically(self, step: Callable[[float], T], failed: T) -> T:
        # Each primitive is one script, atomic in Redis; there is no lock to hold here.
        try:
            return step(self._clock())
        except FAILURES as exc:
            self._report.failed(self._where, exc, self._meanwhile)
            if self.fail_open:
                return failed
            raise Unavailable("Rate limits cannot be checked right now (their store is "
                              "unreachable); retry after the Retry-After seconds.",
                              "ratelimit_unavailable", retry_after=RETRY_AFTER_S) from None

    def _take(self, kind: str, client: str, rate: float, burst: float, cost: float,
              now: float) -> float:
        wait = self._take_script(keys=[self._key(kind, client)],
                                 args=self._take_args(rate, burst, cost, now))
        return float(wait)

    def _claim(self, client: str, cap: int, now: float) -> int:
        member = self._new_member()
        busy = int(self._claim_script(keys=[self._key(IN_FLIGHT, client)],
                                      args=self._claim_args(cap, member, now)))
        if busy < cap:
            self._hold(client, member)
        return busy

    def _admit(self, client: str, rate: float, burst: float, cap: int,
               now: float) -> tuple[float, int]:
        if not (rate and cap):  # one script either way
            return super()._admit(client, rate, burst, cap, now)
        member = self._new_member()
        wait, busy = self._admit_script(
            keys=[self._key(REQUESTS, client), self._key(IN_FLIGHT, client)],
            args=[*self._take_args(rate, burst, 1, now), *self._claim_args(cap, member, now)[1:]])
        wait, busy = float(wait), int(busy)
        if not wait and busy < cap:
            self._hold(client, member)
        return wait, busy

    @staticmethod
    def _take_args(rate: float, burst: float, cost: float, now: float) -> list[Any]:
        # Floats travel as repr(), which Lua's tonumber reads back to the same double.
        return [float(rate), float(burst), cost, float(now), int(GRACE_S * 1000),
                int(MAX_TTL_S * 1000)]

    def _claim_args(self, cap: int, member: str, now: float) -> list[Any]:
        return [float(now), cap, member, float(now + self.lease_s),
                math.ceil((self.lease_s + GRACE_S) * 1000)]

    def _new_member(self) -> str:
        return f"{self.replica or default_replica()}:{next(self._numbers)}"

    def _hold(self, client: str, member: str) -> None:
        with self._lock:
            self._held.setdefault(client, []).append(member)

    def _release(self, client: str, now: float) -> None:
        # Any of this replica's leases of the client will do: they differ only in their end.
        with self._lock:
            held = self._held.get(client)
            if not held:
                return  # one leave too many, or the lease failed open
            member = held.pop()
            if not held:
                del self._held[client]
        self.redis.zrem(self._key(IN_FLIGHT, client), member)

    def _key(self, kind: str, client: str) -> str:
        return f"{self.prefix}{kind}:{client}"


def in_flight_lease(service: ServiceSettings) -> float:
    """How long an in-flight lease lasts: twice the longest a request can hold one (its body
    arriving, then its prediction), and never under ``LEASE_S``."""
    return max(LEASE_S, 2 * (service.client_timeout_s + service.request_timeout_s))


_DEFAULT_REPLICA: tuple[int, str] = (0, "")  # (pid, name): asked once per process


def default_replica() -> str:
    """This process among every replica's: host and pid (a restarted one is a new replica).
    Kept per pid: the request path asks at each lease, and a daemon forks after start-up."""
    global _DEFAULT_REPLICA
    pid = os.getpid()
    if _DEFAULT_REPLICA[0] != pid:
        _DEFAULT_REPLICA = (pid, f"{socket.gethostname()}:{pid}")
    return _DEFAULT_REPLICA[1]


def redacted(url: str) -> str:
    """``url`` without its credentials (user, password, query), for logs."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))
