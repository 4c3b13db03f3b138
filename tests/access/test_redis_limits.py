"""The Redis limiter, against a real redis-server: the same behaviour as the other backends,
held across replicas, and what it does when Redis is down, hung or restarted.

Every clock here is given (frozen, or moved by the test), so no result depends on the
machine's speed; the HTTP tests' limits refill so slowly (one request per 100 s) that they
cannot refill while a test runs.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest
import requests

import limiter_behaviour
from service.access import redis_limits
from service.access.rate_limit import RateLimiter
from service.access.redis_limits import (GRACE_S, LEASE_S, PREFIX, RETRY_AFTER_S,
                                         RedisRateLimiter, default_replica, in_flight_lease,
                                         redacted)
from service.access.shared_limits import make_limiter
from service.cluster.identity import Worker
from service.config import RateLimits, RateLimitSettings, ServiceSettings
from service.errors import Overloaded, RateLimited, Unavailable
from service.metrics import LIFECYCLE
from service.replicas.servers import RedisServer
from support import FIXTURES, ServerProcess, require_server

NOW = 1_700_000_000.0  # a wall-clock time, as time.time() gives
# Redis answers in microseconds; these generous timeouts keep a busy machine from failing a
# call open where a test expects an answer. Only the hung-Redis test keeps the short default.
TIMEOUT_S = 5.0
HUNG_CEILING_S = 10.0  # only a call that waits for a hung Redis without a timeout gets here


behaviour, BEHAVIOUR = limiter_behaviour.behaviour("_rate_limit_behaviour_redis")


@pytest.fixture
def redis_url(redis_server) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.client().flushdb()
    return redis_server.url


def limiter_on(url: str, replica: str = "replica-a", clock=lambda: NOW,
               timeout_s: float = TIMEOUT_S, **options) -> RedisRateLimiter:
    return RedisRateLimiter.from_url(url, replica, clock=clock, timeout_s=timeout_s, **options)


def backend_errors() -> float:
    return LIFECYCLE.get_sample_value("digits_ratelimit_backend_errors_total",
                                      {"backend": "redis"}) or 0.0


# -- the same behaviour as the other backends -----------------------------------------------
def test_every_limiter_test_of_the_memory_backend_is_run_here():
    assert len(BEHAVIOUR) >= 4


@pytest.mark.parametrize("case", BEHAVIOUR, ids=lambda case: case.__name__)
def test_redis_behaves_as_the_memory_backend(case, redis_url, monkeypatch):
    made = []

    def new_limiter():  # each a replica of its own, with keys of its own
        made.append(limiter_on(redis_url, f"replica-{len(made)}", prefix=f"t{len(made)}:"))
        return made[-1]
    monkeypatch.setattr(behaviour, "RateLimiter", new_limiter)
    case()


def test_enter_says_whether_the_request_counts_in_flight(redis_url):
    limiter = limiter_on(redis_url)
    assert limiter.enter("a", RateLimits()) is False                      # nothing to check
    assert limiter.enter("a", RateLimits(requests_per_s=5.0)) is False    # a rate, no cap
    assert limiter.enter("a", RateLimits(max_in_flight=1)) is True
    limiter.leave("a")
    limiter.leave("a")  # one leave too many never goes below zero
    assert limiter.enter("a", RateLimits(max_in_flight=1)) is True
    with pytest.raises(Overloaded):
        limiter.enter("a", RateLimits(max_in_flight=1))


def test_refusals_are_worded_alike_by_memory_and_redis(redis_url):
    assert behaviour.refusals(limiter_on(redis_url)) == \
        behaviour.refusals(RateLimiter(clock=lambda: NOW))


def test_the_retry_after_of_a_long_wait_is_the_memory_backends(redis_url):
    """A slow refill makes the wait many seconds: Lua and Python compute it alike."""
    limits = RateLimits(requests_per_s=0.3, requests_burst=1.0)
    waits = []
    for limiter in (RateLimiter(clock=lambda: NOW), limiter_on(redis_url)):
        limiter.enter("a", limits)
        with pytest.raises(RateLimited) as caught:
            limiter.enter("a", limits)
        waits.append(caught.value.headers["Retry-After"])
    assert waits == ["4", "4"]  # 1 / 0.3 = 3.33 s


# -- shared by replicas ----------------------------------------------------------------------
def test_two_replicas_share_one_bucket_and_one_cap(redis_url):
    clock = [NOW]
    one, two = (limiter_on(redis_url, f"replica-{i}", clock=lambda: clock[0]) for i in range(2))
    behaviour.two_share_one_bucket_and_one_cap(one, two, clock)


def test_a_killed_replicas_leases_expire(redis_url):
    clock = [NOW]
    dead, alive = (limiter_on(redis_url, name, clock=lambda: clock[0], lease_s=120.0)
                   for name in ("dead", "alive"))
    capped = RateLimits(max_in_flight=2)
    assert dead.enter("k", capped) and dead.enter("k", capped)
    del dead  # kill -9: it never leaves
    clock[0] = NOW + 119.0
    with pytest.raises(Overloaded):  # its leases still hold...
        alive.enter("k", capped)
    clock[0] = NOW + 120.0           # ...until they end
    assert alive.enter("k", capped) and alive.enter("k", capped)
    with pytest.raises(Overloaded):
        alive.enter("k", capped)


def test_keys_are_prefixed_and_vanish_once_idle(redis_url, redis_server):
    limiter = limiter_on(redis_url)
    limiter.enter("a", RateLimits(requests_per_s=1.0, requests_burst=2.0, max_in_flight=1))
    limiter.charge_images("a", RateLimits(images_per_s=10.0, images_burst=20.0), 5, 8)
    with pytest.raises(RateLimited):  # more than the burst: refused, and nothing written
        limiter.charge_images("b", RateLimits(images_per_s=10.0, images_burst=20.0), 21, 8)
    db = redis_server.client()
    assert sorted(db.keys("*")) == [f"{PREFIX}images:a".encode(),
                                    f"{PREFIX}in_flight:a".encode(),
                                    f"{PREFIX}requests:a".encode()]
    grace_ms = GRACE_S * 1000
    # A bucket lasts until it would be full again, plus the grace: 1 token at 1/s, 5 at 10/s.
    assert grace_ms < db.pttl(f"{PREFIX}requests:a") <= 1000 + grace_ms
    assert grace_ms < db.pttl(f"{PREFIX}images:a") <= 500 + grace_ms
    assert grace_ms < db.pttl(f"{PREFIX}in_flight:a") <= LEASE_S * 1000 + grace_ms
    assert db.zrange(f"{PREFIX}in_flight:a", 0, -1, withscores=True) == [
        (b"replica-a:0", NOW + LEASE_S)]
    limiter.leave("a")
    assert db.zcard(f"{PREFIX}in_flight:a") == 0


def test_make_limiter_picks_redis_when_a_url_is_set(redis_url):
    settings = RateLimitSettings(redis_url=redis_url, fail_open=False)
    for worker in (None, Worker(slot=1, count=2, run_dir=Path("/nonexistent"), generation=1)):
        limiter = make_limiter(worker, settings, lease_s=300.0)
        assert isinstance(limiter, RedisRateLimiter)
        assert (limiter.fail_open, limiter.lease_s, limiter.replica) == (False, 300.0, None)
        options = limiter.redis.connection_pool.connection_kwargs
        assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.25
    assert isinstance(make_limiter(None, RateLimitSettings()), RateLimiter)
    assert default_replica().endswith(f":{os.getpid()}")
    assert in_flight_lease(ServiceSettings()) == LEASE_S  # 2 x (30 + 10) s is less
    assert in_flight_lease(ServiceSettings(client_timeout_s=100.0)) == 220.0
    assert redacted("redis://user:secret@db.local:6380/1?password=x") == "redis://db.local:6380/1"


def test_four_replicas_of_two_threads_hammering_one_client(redis_url, redis_server):
    """Each update is one script, so however the calls interleave, exactly the bursts are
    taken (the clock stands still) and the cap holds."""
    replicas = [limiter_on(redis_url, f"replica-{i}") for i in range(4)]
    limits = RateLimits(requests_per_s=1.0, requests_burst=150.0, images_per_s=1.0,
                        images_burst=60.0, max_in_flight=3)
    counts = {"charged": 0, "entered": 0, "overloaded": 0, "held": 0, "peak": 0}
    lock = threading.Lock()
    errors = []

    def count(name: str, n: int = 1) -> None:
        with lock:
            counts[name] += n
            counts["peak"] = max(counts["peak"], counts["held"])

    def run(limiter: RedisRateLimiter) -> None:
        try:
            for _ in range(100):
                try:
                    limiter.charge_images("k", limits, 1, 8)
                    count("charged")
                except RateLimited:
                    pass
                try:
                    counted = limiter.enter("k", limits)
                except RateLimited:
                    continue
                except Overloaded:  # a request token was taken all the same
                    count("overloaded")
                    continue
                count("entered")
                count("held")
                count("held", -1)
                if counted:
                    limiter.leave("k")
        except BaseException as exc:
            errors.append(exc)

    before = backend_errors()
    threads = [threading.Thread(target=run, args=(limiter,))
               for limiter in replicas for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and backend_errors() == before  # nothing raised, nothing failed open
    assert counts["charged"] == 60
    assert counts["entered"] + counts["overloaded"] == 150
    assert 1 <= counts["peak"] <= 3
    assert redis_server.client().zcard(f"{PREFIX}in_flight:k") == 0


# -- Redis down, hung, restarted -------------------------------------------------------------
def test_redis_down_fails_open_counts_and_logs_once(private_redis, caplog):
    limiter = limiter_on(private_redis.url)
    limits = RateLimits(requests_per_s=1.0, images_per_s=1.0, max_in_flight=1)
    assert limiter.enter("held", limits) is True
    private_redis.stop()
    before = backend_errors()
    with caplog.at_level(logging.WARNING, logger="service.access"):
        limiter.leave("held")  # cannot reach Redis: its lease will expire; no error
        for _ in range(3):
            assert limiter.enter("a", limits) is False  # admitted, and not counted
            limiter.charge_images("a", limits, 100, batch_max=8)
            limiter.leave("a")  # nothing held: nothing to tell Redis
    assert backend_errors() - before == 1 + 3 * 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "service.access"]
    assert len(warnings) == 1, warnings
    assert "admitting requests unchecked" in warnings[0]
    assert f"127.0.0.1:{private_redis.port}" in warnings[0]


def test_redis_down_refuses_with_503_when_not_failing_open(private_redis):
    limiter = limiter_on(private_redis.url, fail_open=False)
    limits = RateLimits(requests_per_s=1.0, images_per_s=1.0, max_in_flight=1)
    assert limiter.enter("held", limits) is True
    private_redis.stop()
    limiter.leave("held")  # never refuses
    for call in (lambda: limiter.enter("a", limits),
                 lambda: limiter.charge_images("a", limits, 1, batch_max=8)):
        with pytest.raises(Unavailable) as caught:
            call()
        assert (caught.value.status, caught.value.code) == (503, "ratelimit_unavailable")
        assert caught.value.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert limiter.enter("a", RateLimits()) is False  # no limits: Redis is not asked


def test_limits_apply_again_once_redis_is_back(private_redis):
    """The same limiter: it reconnects, and loads its scripts into the empty new Redis."""
    limiter = limiter_on(private_redis.url)
    limits = RateLimits(requests_per_s=1.0, requests_burst=2.0)
    capped = RateLimits(max_in_flight=1)
    admitted = [limiter.enter("k", limits) for _ in range(2)]
    with pytest.raises(RateLimited):
        limiter.enter("k", limits)
    assert limiter.enter("c", capped)
    private_redis.stop()
    admitted += [limiter.enter("k", limits) for _ in range(3)]  # unchecked
    private_redis.start()  # on the same port, empty: no keys, no scripts
    assert private_redis.client().script_exists(limiter._take_script.sha) == [False]
    admitted += [limiter.enter("k", limits) for _ in range(2)]  # a fresh bucket
    assert admitted == [False] * 7
    with pytest.raises(RateLimited):
        limiter.enter("k", limits)
    assert limiter.enter("c", capped)  # the lease before the restart went with it
    with pytest.raises(Overloaded):
        limiter.enter("c", capped)


def test_a_hung_redis_holds_a_call_a_moment_only(private_redis):
    limiter = limiter_on(private_redis.url, timeout_s=redis_limits.TIMEOUT_S)
    limits = RateLimits(requests_per_s=1.0, requests_burst=1.0)
    limiter.enter("before", limits)  # connected, scripts loaded
    private_redis.freeze()
    try:
        started = time.monotonic()
        assert limiter.enter("hung", limits) is False  # timed out: admitted unchecked
        assert time.monotonic() - started < HUNG_CEILING_S
    finally:
        private_redis.thaw()
    limiter.enter("after", limits)
    with pytest.raises(RateLimited):
        limiter.enter("after", limits)


# -- through the real HTTP server ------------------------------------------------------------
IMAGE = (FIXTURES / "digit7_28.png").read_bytes()
PNG = {"Content-Type": "image/png"}
PREDICT = "/v1/models/digits-cnn/predict"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Two services (two replicas) over one Redis, limiting by address: 2 requests, then one
    per 100 s; fail_open = False (a stopped Redis refuses at once, whatever the timeout)."""
    tmp = tmp_path_factory.mktemp("redis-replicas")
    redis_server = require_server(RedisServer, tmp / "redis").start()
    config = ('[service]\nmodels = ["digits-cnn"]\n[ratelimit]\nrequests_per_s = 0.01\n'
              f'requests_burst = 2.0\nredis_url = "{redis_server.url}"\nfail_open = False\n'
              f'redis_timeout_s = {TIMEOUT_S}\n')
    servers = []
    try:
        for name in ("a", "b"):
            (tmp / name).mkdir()
            servers.append(ServerProcess(tmp / name, config).start())
        yield redis_server, servers
    finally:
        for server in servers:
            server.stop()
        redis_server.stop()


def predict(server: ServerProcess) -> requests.Response:
    return requests.post(server.url + PREDICT, data=IMAGE, headers=PNG, timeout=30)


def test_replicas_share_a_clients_limit_and_refuse_without_redis(replicas):
    redis_server, (a, b) = replicas
    statuses = [predict(server).status_code for server in (a, b, a, b)]
    assert statuses == [200, 200, 429, 429]  # 2 in all, not 2 each
    assert redis_server.client().exists(f"{PREFIX}requests:127.0.0.1")

    redis_server.stop()
    for server in (a, b):
        refused = predict(server)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Content-Type"].startswith("application/json")
        assert refused.json()["error"]["code"] == "ratelimit_unavailable"
        assert refused.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    metrics = requests.get(a.url + "/metrics", timeout=10).text
    assert 'digits_ratelimit_backend_errors_total{backend="redis"} 1.0' in metrics
    assert 'digits_http_rejected_requests_total{code="ratelimit_unavailable",status="503"}' \
        in metrics

    redis_server.start()  # empty, on the same port: the services are not restarted
    statuses = [predict(server).status_code for server in (b, a, b)]
    assert statuses == [200, 200, 429]
    assert not any(server.proc.poll() is not None for server in (a, b))
