"""The API's token buckets and key cache on their own, on a clock of the test's."""

from __future__ import annotations

from outbox_worker.api.limits import KEY_TTL, KeyCache, RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_bursts_of_twice_the_rate_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, clock)
    assert [limiter.take("ip") for _ in range(4)] == [0.0] * 4
    assert limiter.take("ip") == 0.5  # one token is due in half a second
    assert limiter.take("other") == 0.0  # each client has its own bucket
    clock.now += 0.5
    assert limiter.take("ip") == 0.0
    assert retry_after(limiter.take("ip")) == "1"
    assert RateLimiter(0.0, clock).take("ip") == 0.0  # 0: no limit


def test_a_flood_of_new_clients_cannot_grow_the_buckets_without_bound() -> None:
    limiter = RateLimiter(1.0, Clock())
    for i in range(120_000):
        limiter.take(i)
    assert len(limiter._buckets) <= 50_000


def test_a_lookup_is_reused_for_half_a_second_and_no_longer() -> None:
    clock = Clock()
    cache = KeyCache(clock=clock)
    known, unknown = cache.digest("brut_" + "a" * 64), cache.digest("brut_bogus")
    assert cache.get(known) == (False, None)
    cache.put(known, "vendor-1")
    cache.put(unknown, None)
    assert cache.get(known) == (True, "vendor-1") and cache.get(unknown) == (True, None)
    clock.now += KEY_TTL
    assert cache.get(known) == (False, None)  # a revocation shows from here on
    assert KEY_TTL < 1.0
