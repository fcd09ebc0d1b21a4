"""The bootstrap poll's rate limiter (the poll's checks themselves: tests/cloud/api/test_gateways_api.py)."""

from __future__ import annotations

from cloud.fleet.signed_poll import PollRateLimiter


def test_a_flood_of_fresh_keys_keeps_the_limiter_bounded() -> None:
    # Each fresh (id, key) leaves a bucket one token short of full: forgetting only full buckets kept them all.
    limiter = PollRateLimiter(1.0, 10, max_keys=100)
    for i in range(1000):
        assert limiter.allow(f"gw-{i}", b"k", now=0.0) is None
    assert len(limiter._buckets) <= 100


def test_a_throttled_gateway_stays_throttled_when_other_buckets_refill() -> None:
    limiter = PollRateLimiter(1.0, 3, max_keys=10)
    for _ in range(3):
        assert limiter.allow("victim", b"k", now=0.0) is None
    for i in range(9):
        assert limiter.allow(f"gw-{i}", b"k", now=0.0) is None
    assert limiter.allow("victim", b"k", now=0.5) is not None
    # 100 s later the nine others have refilled and are forgotten first; the throttled one has refilled too.
    assert limiter.allow("new", b"k", now=100.0) is None
    assert len(limiter._buckets) <= 10
    assert limiter.allow("victim", b"k", now=100.0) is None
