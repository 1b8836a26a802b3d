"""The per-client token bucket (`app.security.RateLimiter`): its answers, and the bound on its table."""

from __future__ import annotations

from app.security import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingLimiter(RateLimiter):
    """Counts how many buckets each request looks at."""

    looked_at = 0

    def _tokens(self, client: str, now: float) -> float:
        self.looked_at += 1
        return super()._tokens(client, now)


def test_a_client_gets_its_burst_then_waits_for_the_next_token() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)

    assert [limiter.acquire("a"), limiter.acquire("a")] == [0.0, 0.0]
    assert limiter.acquire("a") == 1.0  # one token a second
    assert limiter.acquire("b") == 0.0  # another client has its own bucket
    clock.now = 1.0
    assert limiter.acquire("a") == 0.0


def test_refilled_buckets_are_forgotten_oldest_first_without_a_scan_per_request() -> None:
    """Attack review 44 F9: over `max_clients` buckets short of full, every request scanned the whole table."""
    clock = Clock()
    limiter = CountingLimiter(per_minute=1, clock=clock)  # a bucket refills 60 s after its client was seen
    limiter.max_clients = 1000
    for number in range(2000):
        limiter.acquire(f"old-{number}")
    clock.now = 30.0
    for number in range(2000):
        limiter.acquire(f"recent-{number}")

    limiter.looked_at = 0
    for number in range(100):
        limiter.acquire(f"new-{number}")
    assert limiter.looked_at <= 2 * 100  # its own bucket, and the oldest one, not the table

    clock.now = 61.0  # the "old" buckets have refilled; the "recent" ones have not
    limiter.acquire("later")
    assert len(limiter._buckets) == 2000 + 100 + 1
    assert not any(client.startswith("old-") for client in limiter._buckets)
    assert limiter.acquire("recent-0") > 0.0  # still remembered: its bucket is not full yet
