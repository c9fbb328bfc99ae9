"""Dispatcher: outbox events -> delivery rows.

One statement (``dispatch``) claims a batch of undispatched events
(``FOR UPDATE SKIP LOCKED``), marks them dispatched and inserts one delivery
per matching enabled webhook: one round trip, where a transaction of two
statements took four (BEGIN, claim, write, COMMIT), and the commit-to-send
latency is mostly round trips. Deliveries for which this process has free
send slots are inserted already leased to it and handed straight to the
sender: no second claim, no wait.

Each event's body bytes are encoded here, once. They reach the database
with the first outcome of the event's deliveries (the completer's
statement), so a dispatch costs one round trip before its requests go out.
Only an event with deliveries this process did not lease, which another
worker may claim at once, gets its bytes stored right after the hand-over
(``store_bodies``). Until its bytes are stored an event's body is NULL; if
the worker dies first, whoever claims the delivery encodes it from the
event. The encoding is deterministic, so the bytes are the same, and that
claimer stores them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from outbox_worker import db, metrics
from outbox_worker.jobs import (
    Handoff,
    Job,
    bodies_params,
    lease_limit_per_webhook,
    owner_lease_limit,
    readable_bodies,
)
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings
from outbox_worker.signing import event_body

if TYPE_CHECKING:
    from outbox_worker.spans import Tracing


class Dispatcher:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        settings: Settings,
        box: SecretBox | None,
        sender: Handoff,
        log: Any,
        tracing: Tracing | None = None,
        stats: metrics.HotPathStats | None = None,
    ) -> None:
        self._pool = pool
        self._tracing = tracing
        self._stats = stats  # its database's metrics
        self._settings = settings
        self._box = box
        self._sender = sender
        self._log = log.bind(component="dispatcher")
        self.unleased = 0  # deliveries of the last batch left for the sender to claim

    async def dispatch_batch(self) -> int:
        """Dispatch one batch; returns how many events it took."""
        settings = self._settings
        handed = False
        self.unleased = 0
        reserved = 0
        tracing = self._tracing
        started = time.time_ns() if tracing else 0
        try:
            async with self._pool.connection() as conn:
                # Reserved once the connection is ours: a database slow to
                # hand one out holds no slots of the budget it may share.
                reserved = self._sender.reserve(settings.batch_size)
                lease_ends = time.monotonic() + settings.lease_seconds
                rows = await db.fetch_async(
                    conn,
                    "dispatch",
                    {
                        "limit": settings.batch_size,
                        "lease_limit": reserved,
                        "busy_webhooks": self._sender.busy_webhooks(),
                        "busy_owners": self._sender.busy_owners(),
                        "per_webhook": lease_limit_per_webhook(settings),
                        "per_owner": owner_lease_limit(settings),
                        "lease_seconds": settings.lease_seconds,
                        "worker_id": settings.worker_id,
                        "traced": tracing is not None,
                    },
                )
                if not rows:
                    return 0
                events = [r for r in rows if r["first"]]
                bodies = {
                    e["event_id"]: event_body(e["event_type"], e["data"], e["created_at"], self._log)
                    for e in events
                }
                unleased = [r["event_id"] for r in rows if r["id"] is not None and not r["leased"]]
                for_others = set(unleased)  # another worker may claim these at once
                jobs = []
                covered = set(for_others)  # events whose bytes are taken care of
                for r in rows:
                    if r["leased"]:
                        event_id = r["event_id"]
                        # One job per event carries its bytes to the completer.
                        store = event_id not in covered
                        covered.add(event_id)
                        jobs.append(
                            Job.from_row(
                                r, self._box, bodies[event_id], store_body=store, lease_ends=lease_ends
                            )
                        )
                self.unleased = len(unleased)
                if tracing:
                    tracing.adopt(jobs, rows, "outbox dispatch", started)
                # The statement has committed: the leased rows may be sent now.
                self._sender.hand_over(jobs, reserved)
                handed = True
                if for_others:
                    if jobs:
                        await asyncio.sleep(0)  # let the requests reach the wire first
                    batch = bodies_params(readable_bodies({i: bodies[i] for i in for_others}))
                    await db.fetch_async(conn, "store_bodies", batch)
            metrics.observe_dispatch((e["created_at"] for e in events), self._stats)
            deliveries = sum(1 for r in rows if r["id"] is not None)
            self._log.debug("dispatched", events=len(events), deliveries=deliveries, leased=len(jobs))
            return len(events)
        finally:
            if not handed:
                # An empty batch, or an error: if the statement failed it
                # rolled back; if it committed, its leased rows are sent by
                # whoever claims them once the lease expires.
                self._sender.hand_over([], reserved)
