"""What keeps the management API's database for real work: a per-IP and a
per-key request rate limit, and a brief cache of key lookups.

Without them every request took a database connection (10 in the pool),
one with a bogus key too. A small token bucket per client does the job; a
rate-limiting library would add storage back-ends this needs none of. The
counts are per API process: with N processes behind a balancer a client
gets up to N times the rate.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Hashable

Clock = Callable[[], float]

# Long enough that a client's burst of requests looks its key up once,
# short enough that a revoked key is refused within a second (the cache is
# per process and never told of a revocation).
KEY_TTL = 0.5

# Clients (IPs, keys) remembered at most; beyond it the idle ones go, as
# a full bucket is the same as none.
_MAX_ENTRIES = 50_000


class RateLimiter:
    """A token bucket per client: ``rate`` requests a second, bursts of
    twice that. ``rate`` 0 turns it off."""

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = 2 * rate
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: Hashable) -> float:
        """Spend a token of ``client``'s; 0 when granted, else the seconds
        until one is due (the ``Retry-After``)."""
        if not self.rate:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate
        if len(self._buckets) >= _MAX_ENTRIES and client not in self._buckets:
            self._forget_idle(now)
        self._buckets[client] = (tokens - 1, now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        full_after = self.burst / self.rate  # seconds for an empty bucket to refill
        self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < full_after}
        if len(self._buckets) >= _MAX_ENTRIES:  # a flood of new clients: start afresh
            self._buckets.clear()


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class KeyCache:
    """The owner of each key looked up in the last :data:`KEY_TTL` seconds
    (None: unknown or revoked), by the key's SHA-256: the key itself is not
    kept."""

    def __init__(self, ttl: float = KEY_TTL, clock: Clock = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._owners: dict[bytes, tuple[str | None, float]] = {}  # hash -> (owner, expires)

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()

    def get(self, digest: bytes) -> tuple[bool, str | None]:
        """(found, owner): found is False when the database must be asked."""
        entry = self._owners.get(digest)
        if entry is None or entry[1] <= self._clock():
            return False, None
        return True, entry[0]

    def put(self, digest: bytes, owner: str | None) -> None:
        now = self._clock()
        if len(self._owners) >= _MAX_ENTRIES:
            self._owners = {d: e for d, e in self._owners.items() if e[1] > now}
            if len(self._owners) >= _MAX_ENTRIES:
                self._owners.clear()
        self._owners[digest] = (owner, now + self._ttl)
