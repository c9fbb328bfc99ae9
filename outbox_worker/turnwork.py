"""What one database's worker does in its turn (:mod:`~outbox_worker.turns`).

When connections are lent, the worker's loops do not run on their own
timers: each turn runs, on the one connection of that turn, what they would
have done by then: the outcomes pending are written, the upkeep due runs,
new events are fanned out and due deliveries claimed. The claimed and
fanned-out deliveries are sent after the turn, with no connection held, and
their outcomes ask for the next turn (shortly, so that a few come together,
as the completer's own loop waits).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from outbox_worker.completer import COMPLETE_DELAY, Completer
from outbox_worker.dispatch import Dispatcher
from outbox_worker.jobs import Outcome
from outbox_worker.sender import Sender
from outbox_worker.turns import Seat, TurnScheduler

# Fan-out batches in one turn: a large backlog of new events goes on in the
# database's next turn, after the others have had theirs.
DISPATCH_BATCHES = 4
# Outcome batches written in one turn.
COMPLETE_BATCHES = 4


class Upkeep:
    """One maintenance service's ``run_once``, every ``interval`` seconds at
    most, in whichever turn comes then."""

    def __init__(self, name: str, interval: float, run_once: Callable[[], Awaitable[Any]]) -> None:
        self.name = name
        self.interval = interval
        self.run_once = run_once
        self.next_at = time.monotonic() + interval


class Nudge(asyncio.Event):
    """The sender's wake-up: with no claim loop of its own, a wake-up asks
    for a turn, in which the claim runs."""

    def __init__(self, nudge: Callable[[], None]) -> None:
        super().__init__()
        self._nudge = nudge

    def set(self) -> None:
        super().set()
        self._nudge()


class TurnWork:
    """A database's due work, run by :class:`~outbox_worker.turns.TurnScheduler`
    in that database's turns."""

    def __init__(
        self, turns: TurnScheduler, seat: Seat, completer: Completer, batch_size: int, log: Any
    ) -> None:
        self._turns = turns
        self._seat = seat
        self._completer = completer
        self._batch = batch_size
        self._log = log.bind(component="turn")
        self._flush_timer: asyncio.TimerHandle | None = None
        self._dispatcher: Dispatcher | None = None
        self._sender: Sender | None = None
        self._first: Callable[[], Awaitable[None]] | None = None
        self._upkeep: list[Upkeep] = []
        self._claim_ahead = False  # in a turn, before its claim: wake-ups are for that claim

    def start(
        self,
        dispatcher: Dispatcher,
        sender: Sender,
        first: Callable[[], Awaitable[None]],
        upkeep: list[Upkeep],
    ) -> None:
        """Take turns from now on: ``first`` runs before anything else (once it
        has worked), then each turn's work."""
        self._dispatcher, self._sender, self._first, self._upkeep = dispatcher, sender, first, upkeep
        sender.wake = Nudge(self._woken)
        self._seat.work = self
        self.want()

    def stop(self) -> None:
        """No more fan-outs and claims (shutdown): later turns only lend the
        connection (the last outcomes, the leases handed back)."""
        self._seat.work = None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def want(self) -> None:
        self._turns.want(self._seat)

    def _woken(self) -> None:
        """The sender was woken (rows it could not lease, slots of the fleet
        free again): a turn claims them, unless this turn's claim is still
        to come. Its own fan-out's hand-over wakes it whenever the batch
        wanted more slots than it got: asking for another turn then would
        turn forever."""
        if not self._claim_ahead:
            self.want()

    def record(self, outcome: Outcome) -> None:
        """The sender's ``record``: the completer queues the outcome, and the
        database asks for a turn to write it and claim again."""
        self._completer.record(outcome)
        if outcome.status == "pending":  # a retry: its turn comes when it falls due
            seat = self._seat
            seat.due_at = min(seat.due_at, time.monotonic() + max(0.0, outcome.retry_in))
        if self._completer.backlog >= self._batch:
            self.want()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(COMPLETE_DELAY, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self.want()

    async def __call__(self) -> bool:
        """One turn's work on the turn's connection; True when more is due at once."""
        dispatcher, sender = self._dispatcher, self._sender
        assert dispatcher is not None and sender is not None
        if self._first is not None:
            await self._first()  # the webhook-id prefix, before anything is sent
            self._first = None
        self._claim_ahead = True
        try:
            return await self._work(dispatcher, sender)
        finally:
            self._claim_ahead = False

    async def _work(self, dispatcher: Dispatcher, sender: Sender) -> bool:
        completer = self._completer
        for _ in range(COMPLETE_BATCHES):
            if not completer.backlog:
                break
            await completer.flush_once()
        now = time.monotonic()
        for upkeep in self._upkeep:
            if now >= upkeep.next_at:
                upkeep.next_at = now + upkeep.interval
                try:
                    await upkeep.run_once()
                except Exception as exc:
                    if self._seat.conn is None or self._seat.conn.closed:
                        raise
                    self._log.warning("upkeep failed", upkeep=upkeep.name, error=str(exc).strip())
        more = False
        for _ in range(DISPATCH_BATCHES):
            if await dispatcher.dispatch_batch() < self._batch:
                break
        else:
            more = True
        ledger = sender.ledger
        room = min(ledger.free_slots(), self._batch)
        if sender.claiming:
            # Even with no room: asking makes its share of the fleet's slots wanted (budget).
            claimed = await sender.claim_batch()
            self._claim_ahead = False
            if claimed >= room and ledger.free_slots() >= ledger.refill_at:
                more = True  # a full claim, and room for more: the rest in its next turn
        if completer.backlog:
            more = True
        if self._seat.due_at <= now:
            self._seat.due_at = math.inf
        return more
