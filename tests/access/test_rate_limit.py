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
