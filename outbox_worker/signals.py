"""Named points in the sending core that tests wait on (River's test signals).

A test that slept and then read private state was both slow and wrong on a
loaded machine; one that waits for "the sender has claimed" or "a slot was
freed" is neither. Raising a signal nobody waits for costs an increment and
an empty-list check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Signal:
    """Counts how often a point in the code was passed and wakes waiters."""

    __slots__ = ("_waiters", "count")

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[asyncio.Future[None]] = []

    def fire(self) -> None:
        self.count += 1
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def next(self, within: float = 10.0) -> None:
        """Return once the signal fires again (after this call)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, within)
        except TimeoutError:
            raise AssertionError(f"no signal within {within}s") from None

    async def until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Return once ``condition()`` holds, checked now and after each firing."""
        deadline = time.monotonic() + within
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"condition still false after {within}s")
            await self.next(left)


@dataclass(slots=True)
class SenderSignals:
    claimed: Signal = field(default_factory=Signal)  # a claim round ended (its jobs handed over, or no room)
    handed_over: Signal = field(default_factory=Signal)  # leased jobs (from a claim or a fan-out) admitted
    slot_freed: Signal = field(default_factory=Signal)  # a request ended and its counts were released
    drained: Signal = field(default_factory=Signal)  # shutdown: every lane has ended
