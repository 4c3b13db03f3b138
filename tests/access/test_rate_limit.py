"""Token buckets and in-flight caps, with the clock given explicitly."""
from __future__ import annotations

import math

import pytest

from service.access.rate_limit import RateLimiter, TokenBucket
from service.config import RateLimits
from service.errors import Overloaded, RateLimited


def test_a_bucket_allows_its_burst_then_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, capacity=3.0)
    now = bucket.stamp
    assert [bucket.take(1, now) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, now) == pytest.approx(0.5)      # one token in half a second
    assert bucket.take(1, now + 0.5) == 0.0
    assert bucket.take(1, now + 0.5) == pytest.approx(0.5)
    assert bucket.take(1, now + 100) == 0.0                # never more than the capacity...
    assert bucket.tokens == pytest.approx(2.0)             # ...so 3 - 1 are left


def test_a_cost_above_the_capacity_can_never_succeed():
    bucket = TokenBucket(rate=10.0, capacity=5.0)
    assert math.isinf(bucket.take(6, bucket.stamp))
    assert bucket.tokens == 5.0  # and took nothing


def test_requests_over_the_rate_get_429_with_retry_after():
    limiter = RateLimiter()
    limits = RateLimits(requests_per_s=1.0, requests_burst=2.0)
    limiter.enter("a", limits)
    limiter.enter("a", limits)
    with pytest.raises(RateLimited) as caught:
        limiter.enter("a", limits)
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
    limiter.enter("b", limits)  # another client has its own bucket


def test_images_are_charged_by_count():
    limiter = RateLimiter()
    limits = RateLimits(images_per_s=10.0, images_burst=20.0)
    limiter.charge_images("a", limits, 15, batch_max=256)
    with pytest.raises(RateLimited, match="10 images a second"):
        limiter.charge_images("a", limits, 10, batch_max=256)
    with pytest.raises(RateLimited, match="split the request") as caught:
        limiter.charge_images("b", limits, 21, batch_max=256)
    assert caught.value.headers["Retry-After"] == "60"
    limiter.charge_images("c", RateLimits(), 10_000, batch_max=256)  # no image limit


def test_the_in_flight_cap_counts_entries_and_leaves():
    limiter = RateLimiter()
    limits = RateLimits(max_in_flight=2)
    limiter.enter("a", limits)
    limiter.enter("a", limits)
    with pytest.raises(Overloaded) as caught:
        limiter.enter("a", limits)
    assert caught.value.status == 503 and caught.value.code == "too_many_in_flight"
    limiter.leave("a")
    limiter.enter("a", limits)
    limiter.enter("b", limits)


def test_changed_limits_start_a_fresh_bucket():
    limiter = RateLimiter()
    limiter.enter("a", RateLimits(requests_per_s=1.0))
    with pytest.raises(RateLimited):
        limiter.enter("a", RateLimits(requests_per_s=1.0))
    limiter.enter("a", RateLimits(requests_per_s=5.0, requests_burst=5.0))


def refusals(limiter) -> list:
    """What ``limiter`` answers to a fixed sequence of calls that ends in every refusal
    (each backend's test compares it with the memory backend's, over a frozen clock)."""
    limits = RateLimits(requests_per_s=2.0, images_per_s=1.0, images_burst=3.0,
                        max_in_flight=1)
    seen = []
    for call in (lambda: limiter.enter("a", limits),          # admitted, in flight
                 lambda: limiter.enter("a", limits),          # over the cap
                 lambda: limiter.enter("a", limits),          # over the rate
                 lambda: limiter.charge_images("a", limits, 2, 8),
                 lambda: limiter.charge_images("a", limits, 2, 8),
                 lambda: limiter.charge_images("a", limits, 4, 8)):
        try:
            seen.append(call())
        except (RateLimited, Overloaded) as exc:
            seen.append((exc.status, exc.code, str(exc), exc.headers.get("Retry-After")))
    assert seen[1][:2] == (503, "too_many_in_flight")
    assert seen[2][:2] == (429, "rate_limited") and seen[2][3] == "1"
    assert seen[5][3] == "60"  # 4 images, more than the burst of 3
    return seen


def two_share_one_bucket_and_one_cap(one, two, clock: list[float]) -> None:
    """Two limiters over one store (two workers, or replicas), moved by ``clock[0]``: one
    bucket and one in-flight cap between them, not one each."""
    limits = RateLimits(requests_per_s=5.0)
    admitted = 0
    for second in range(3):
        clock[0] += 1
        for _ in range(10):
            for limiter in (one, two):
                try:
                    limiter.enter("k", limits)
                    admitted += 1
                except RateLimited:
                    pass
    assert admitted == 15  # 5 a second, not 5 for each
    capped = RateLimits(max_in_flight=2)
    assert one.enter("c", capped) and two.enter("c", capped)
    with pytest.raises(Overloaded, match="already has 2 requests"):
        one.enter("c", capped)
    two.leave("c")
    assert one.enter("c", capped)
    with pytest.raises(Overloaded):
        two.enter("c", capped)
