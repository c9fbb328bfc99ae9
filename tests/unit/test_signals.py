"""Test signals: waiting for a point in the code instead of sleeping."""

from __future__ import annotations

import asyncio

import pytest

from outbox_worker.signals import Signal


async def test_next_returns_when_the_signal_fires_and_counts_it() -> None:
    signal = Signal()
    asyncio.get_running_loop().call_soon(signal.fire)
    await signal.next(within=1)
    assert signal.count == 1


async def test_until_checks_the_condition_after_each_firing() -> None:
    signal, seen = Signal(), list[int]()

    def step(n: int) -> None:
        seen.append(n)
        signal.fire()

    loop = asyncio.get_running_loop()
    for n in range(3):
        loop.call_later(0.01 * (n + 1), step, n)
    await signal.until(lambda: len(seen) == 3, within=1)
    assert signal.count == 3


async def test_a_signal_that_never_fires_fails_the_wait_clearly() -> None:
    with pytest.raises(AssertionError, match="no signal within"):
        await Signal().next(within=0.05)
