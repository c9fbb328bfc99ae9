"""The sender's capacity ledger: every count of what this process holds.

A leased job is in exactly one place: running (bound to a lane), queued
behind its receiver origin (that origin is at its per-host limit, or others
queued first), queued behind its owner (that owner's requests hold its
share of ``concurrency``), or waiting for any slot (leased one refill ahead
of ``concurrency``). Beside them: slots reserved for a claim or fan-out
whose rows are not back yet, and the counts of leased jobs per webhook and
per owner, which decide which webhooks and owners a claim skips. Only the
methods below change these counts, so each invariant is kept in one place:

- running + queued + waiting + reserved <= concurrency + one refill;
- at most ``per_host_concurrency`` running per origin;
- at most the owner's share (``jobs.owner_limit``) running per owner, at
  most 3 x share + a quarter held, and an owner's queued jobs start as soon
  as its requests end;
- the webhooks queued at one origin take turns at its slots;
- a job whose lease would end before a whole request could is never handed
  out (it is forgotten here; its row is due again when the lease ends).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from collections.abc import Hashable, ValuesView
from typing import TypeVar

from outbox_worker.budget import Share
from outbox_worker.jobs import Job, ahead_per_webhook, owner_limit, refill_size, timeout_tick
from outbox_worker.settings import Settings

Lane = asyncio.Task[None]


K = TypeVar("K", bound=Hashable)


def _decrement(counts: Counter[K], key: K) -> None:
    """One less under ``key``, dropping it at zero: the counters stay as
    small as what is running, and ``busy_webhooks`` walks only those."""
    left = counts[key] - 1
    if left <= 0:
        del counts[key]
    else:
        counts[key] = left


class CapacityLedger:
    def __init__(self, settings: Settings, share: Share | None = None) -> None:
        # With several databases, what this one may hold of the process's
        # slots (outbox_worker.budget); None: the slots are all its own.
        self.share = share
        self.concurrency = settings.concurrency
        self.per_host = settings.per_host_concurrency
        self.refill_at = refill_size(settings)
        # A webhook holding its per-host limit plus a quarter is skipped by claims.
        self.saturated_at = settings.per_host_concurrency + ahead_per_webhook(settings)
        # When a request started now ends at the latest: its timeout and the sweep's tick.
        self._request_span = settings.request_timeout + timeout_tick(settings)
        self._running: dict[int, tuple[Lane, Job]] = {}  # delivery id -> its lane and job
        self._per_origin: Counter[str] = Counter()  # requests running per origin
        self._per_webhook: Counter[uuid.UUID] = Counter()  # leased jobs held, in any place
        self.per_owner = owner_limit(settings)
        # Like a webhook's: an owner holding its share plus a quarter is skipped by claims.
        self.owner_saturated_at = self.per_owner + self.per_owner // 4
        # Held beyond this (a claim and a fan-out leased one owner at once),
        # a job is given back unsent: the other owners' room stays free.
        self.owner_held_cap = 3 * self.per_owner + self.per_owner // 4
        self._owner_capped = self.owner_held_cap < self.concurrency + self.refill_at
        self._per_owner: Counter[str] = Counter()  # leased jobs held, in any place
        self._owner_running: Counter[str] = Counter()
        self._owner_queued: dict[str, deque[Job]] = {}  # counted in _queued_count
        # Per origin, per webhook, in turn (see next_queued).
        self._queued: dict[str, dict[uuid.UUID, deque[Job]]] = {}
        self._queued_count = 0
        self._waiting: deque[Job] = deque()
        self._reserved = 0

    # -- reading ------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return self._queued_count

    @property
    def waiting(self) -> list[int]:
        """Ids of the jobs leased ahead, oldest first."""
        return [job.id for job in self._waiting]

    def running(self) -> ValuesView[tuple[Lane, Job]]:
        return self._running.values()

    def free_slots(self) -> int:
        # Room for one refill beyond ``concurrency``: those jobs wait and
        # start the moment a request ends, while the next claim is on its
        # way. Without them, each slot that freed stood empty until a
        # refill's worth had freed and that claim came back: 1,000 slots
        # against a 100 ms receiver averaged ~800 requests running
        # (docs/performance.md, "Fixed on the way").
        held = len(self._running) + self._queued_count + len(self._waiting) + self._reserved
        free = self.concurrency + self.refill_at - held
        return free if self.share is None else min(free, self.share.allowance())

    def has_room(self) -> bool:
        """Whether a reservation would get a slot now. With a share, asking
        for room that other databases hold makes it want some (a claim
        checks before it waits for a connection, and reserves after)."""
        if self.share is None:
            return self.free_slots() > 0
        held = len(self._running) + self._queued_count + len(self._waiting) + self._reserved
        if self.concurrency + self.refill_at - held <= 0:
            return False
        if self.share.allowance() <= 0:
            self.share.want()
            return False
        return True

    def busy_webhooks(self) -> list[uuid.UUID]:
        """Webhooks holding their cap and their share ahead: claims skip them."""
        full = self.saturated_at
        return [w for w, n in self._per_webhook.items() if n >= full]

    def owner_waits(self, owner: str) -> bool:
        """Whether jobs are queued behind ``owner`` (see :meth:`next_for_owner`)."""
        return owner in self._owner_queued

    def busy_owners(self) -> list[str]:
        """Owners holding their share and a quarter ahead: claims skip them."""
        full = self.owner_saturated_at
        return [o for o, n in self._per_owner.items() if n >= full]

    def owner_full(self, job: Job) -> bool:
        """Whether ``job``'s owner already holds all it may: it is given back."""
        return self._owner_capped and self._per_owner.get(job.owner_id, 0) >= self.owner_held_cap

    def saturated(self, job: Job) -> bool:
        """Whether a claim would skip ``job``'s webhook or its owner."""
        return (
            self._per_webhook.get(job.webhook_id, 0) >= self.saturated_at
            or self._per_owner.get(job.owner_id, 0) >= self.owner_saturated_at
        )

    def any_unsaturated(self, webhook_ids: list[uuid.UUID], owners: list[str]) -> bool:
        full, owner_full = self.saturated_at, self.owner_saturated_at
        return any(self._per_webhook[w] < full for w in webhook_ids) or any(
            self._per_owner[o] < owner_full for o in owners
        )

    # -- changing -----------------------------------------------------------

    def reserve(self, wanted: int) -> int:
        """Reserve up to ``wanted`` slots for a claim or a fan-out."""
        if self.share is None:
            granted = max(0, min(wanted, self.free_slots()))
        else:
            held = len(self._running) + self._queued_count + len(self._waiting) + self._reserved
            granted = self.share.take(max(0, min(wanted, self.concurrency + self.refill_at - held)))
        self._reserved += granted
        return granted

    def release(self, reserved: int) -> None:
        """Give back a reservation; the jobs it brought are admitted one by one."""
        self._reserved -= reserved
        if self.share is not None:
            self.share.give(reserved)

    def admit(self, job: Job) -> bool:
        """Count a newly leased job. True: start it now (then :meth:`start`);
        False: it queues behind its origin or waits for any slot."""
        if self.share is not None:
            self.share.hold()
        self._per_webhook[job.webhook_id] += 1
        self._per_owner[job.owner_id] += 1
        if self._must_queue(job.origin):
            self._queue(job)
            return False
        if len(self._running) >= self.concurrency:
            self._waiting.append(job)  # its owner is judged when a slot frees
            return False
        owner = job.owner_id
        if self._owner_running[owner] >= self.per_owner or owner in self._owner_queued:
            self._queue_for_owner(job)
            return False
        return True

    def start(self, job: Job, lane: Lane) -> None:
        """``job`` runs now, sent by ``lane``."""
        self._per_origin[job.origin] += 1
        self._owner_running[job.owner_id] += 1
        self._running[job.id] = (lane, job)

    def finish(self, job: Job) -> None:
        """``job``'s request has ended (or was never made)."""
        self._running.pop(job.id, None)
        self._forget(job)
        _decrement(self._per_origin, job.origin)
        _decrement(self._owner_running, job.owner_id)

    def next_queued(self, origin: str) -> tuple[Job | None, list[int]]:
        """The origin's next queued job, for the lane that just finished one
        there, and the ids of those skipped as too late to send. The webhooks
        queued at an origin take turns: first in, first out, one webhook's
        burst queued ahead of another customer's delivery on the same host (a
        shared SaaS endpoint) held it back for as many rounds of the slow
        webhook's requests as it had queued. Behind a slow receiver a job can
        queue for several request timeouts, and sent after its lease ended it
        would run beside another worker's claim of the same delivery."""
        turns = self._queued.get(origin)
        if not turns:
            return None, []
        chosen = None
        skipped: list[int] = []
        would_end = time.monotonic() + self._request_span
        while turns:
            webhook_id, queue = next(iter(turns.items()))
            job = queue.popleft()
            if not queue:
                del turns[webhook_id]
            elif len(turns) > 1:
                del turns[webhook_id]
                turns[webhook_id] = queue  # to the back of the line
            self._queued_count -= 1
            if job.lease_ends <= would_end:
                skipped.append(job.id)
                self._forget(job)
            elif self._owner_running[job.owner_id] >= self.per_owner:
                self._queue_for_owner(job)  # its owner's next free slot starts it
            else:
                chosen = job
                break
        if not turns:
            del self._queued[origin]
        return chosen, skipped

    def next_for_owner(self, owner: str) -> tuple[list[Job], list[int]]:
        """The jobs queued behind ``owner`` that may start now its requests
        have room again (called as one of them ends), and the ids skipped as
        too late to send. One whose origin is at its limit meanwhile joins
        that origin's queue; with every slot busy, one waits for any slot."""
        queue = self._owner_queued.get(owner)
        if queue is None:
            return [], []
        ready: list[Job] = []
        skipped: list[int] = []
        would_end = time.monotonic() + self._request_span
        room = self.per_owner - self._owner_running[owner]
        while queue and len(ready) < room:
            job = queue.popleft()
            self._queued_count -= 1
            if job.lease_ends <= would_end:
                skipped.append(job.id)
                self._forget(job)
            elif self._must_queue(job.origin):
                self._queue(job)
            elif len(self._running) + len(ready) < self.concurrency:
                ready.append(job)
            else:
                self._waiting.append(job)
        if not queue:
            del self._owner_queued[owner]
        return ready, skipped

    def next_waiting(self) -> tuple[Job | None, list[int]]:
        """The oldest job leased ahead of a free slot, for a lane with none
        queued at its origin, and the ids skipped as too late to send. One
        whose origin is at its limit meanwhile joins that origin's queue."""
        if not self._waiting:
            return None, []
        skipped: list[int] = []
        would_end = time.monotonic() + self._request_span
        while self._waiting:
            job = self._waiting.popleft()
            if job.lease_ends <= would_end:
                skipped.append(job.id)
                self._forget(job)
            elif self._must_queue(job.origin):
                self._queue(job)
            elif self._owner_running[job.owner_id] >= self.per_owner:
                self._queue_for_owner(job)
            else:
                return job, skipped
        return None, skipped

    def take_unsent(self) -> list[int]:
        """Forget every queued and waiting job (shutdown); their ids, whose
        leases go back at once: they were never sent."""
        unsent = [job for turns in self._queued.values() for queue in turns.values() for job in queue]
        unsent += [job for queue in self._owner_queued.values() for job in queue]
        unsent += self._waiting
        for job in unsent:
            self._forget(job)
        self._queued.clear()
        self._owner_queued.clear()
        self._queued_count = 0
        self._waiting.clear()
        return [job.id for job in unsent]

    def _must_queue(self, origin: str) -> bool:
        """Whether a job for ``origin`` waits in its queue: the origin is at
        its limit, or jobs queued before it go first."""
        return self._per_origin[origin] >= self.per_host or origin in self._queued

    def _forget(self, job: Job) -> None:
        """``job`` is no longer held here (sent, or left to a later claim)."""
        if self.share is not None:
            self.share.give()
        _decrement(self._per_webhook, job.webhook_id)
        _decrement(self._per_owner, job.owner_id)

    def _queue_for_owner(self, job: Job) -> None:
        """Queue ``job`` until its owner's requests leave room, in arrival order."""
        queue = self._owner_queued.get(job.owner_id)
        if queue is None:
            queue = self._owner_queued[job.owner_id] = deque()
        queue.append(job)
        self._queued_count += 1

    def _queue(self, job: Job) -> None:
        """Queue ``job`` behind its origin's running requests, in its webhook's turn."""
        turns = self._queued.setdefault(job.origin, {})
        queue = turns.get(job.webhook_id)
        if queue is None:
            queue = turns[job.webhook_id] = deque()
        queue.append(job)
        self._queued_count += 1
