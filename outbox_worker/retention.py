"""Retention run by the workers: finished history older than
``OUTBOX_RETENTION`` is removed in small, paced batches, by one worker at a
time.

- **What goes**: events created before the window whose deliveries are all
  finished (delivered or failed), with their deliveries and attempts (the
  delete cascade), events that matched no webhook, and idempotency keys past
  ``outbox.config.idempotency_window`` (their own window, also when
  retention is off). Pending deliveries, leased ones included, keep their
  event however old; nothing inside the window is touched.
- **Who**: the worker that claims the ``retention`` row of
  ``outbox.maintenance_leases``. Each batch renews the lease first, in the
  batch's own transaction, so two workers' batches can never overlap; a
  worker that dies lets the lease lapse after ``LEASE_SECONDS``. No
  session-level advisory lock, so it works behind a transaction-mode pooler.
- **How fast**: a batch looks at ``BATCH_EVENTS`` events along the primary
  key (its cost does not grow with the table), then the service sleeps
  ``DUTY`` pacing: at most that share of the time is spent deleting, so the
  delivery hot path keeps the database (docs/performance.md, "Retention").
- **Seen**: Prometheus metrics (rows removed per table, last pass, lag of
  the oldest finished row beyond the window), a log line per pass, and a row
  per pass in ``outbox.maintenance_runs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import Counter, Gauge
from psycopg_pool import AsyncConnectionPool

from outbox_worker import db

NAME = "retention"
# Events looked at per batch: with 3 webhooks and a retry or two, ~10,000
# rows deleted in one transaction of ~0.1 s on a small machine.
BATCH_EVENTS = 2000
# Most of the time a pass spends in batches: after a batch of t seconds it
# sleeps t * (1 - DUTY) / DUTY. It bounds catching up (after an outage, an
# upgrade, a shorter window) to a tenth of one backend, 5% of a 2-core
# database; in the steady state a pass does only what the load added, and
# ends. A batch of 2,000 events (14,000 rows with 3 webhooks) took 30-106 ms
# beside a load of 1,000 events/s here: at 3% the passes fell behind it
# (536 events/s removed), at 10% they kept up (docs/performance.md).
DUTY = 0.1
LEASE_SECONDS = 60.0
# Longest pacing sleep: well inside the lease, so a slow batch never lets it lapse.
MAX_PAUSE = LEASE_SECONDS / 4

REMOVED = Counter(
    "outbox_retention_removed_rows",
    "Rows removed by retention, by table (events, deliveries, delivery_attempts, idempotency_keys)",
    ["table"],
)
BATCHES = Counter("outbox_retention_batches", "Retention batches this worker ran")
LAST_PASS = Gauge(
    "outbox_retention_last_pass_timestamp_seconds", "Unix time this worker last finished a retention pass"
)
LAG = Gauge(
    "outbox_retention_lag_seconds",
    "How far beyond the window the oldest finished event was at this worker's latest batch (0: caught up)",
)
HOLDER = Gauge("outbox_retention_holder", "1 while this worker holds the retention lease")


def pass_interval(window: timedelta | None) -> float:
    """Seconds between passes: a tenth of the window, within 1 s to 60 s
    (a minute when off: idempotency keys only)."""
    if window is None:
        return 60.0
    return min(60.0, max(1.0, window.total_seconds() / 10))


@dataclass(slots=True)
class Totals:
    """One pass: from the claim (database clock) to its last batch's end."""

    started_at: datetime
    finished_at: datetime
    batches: int = 0
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    keys: int = 0
    lost: bool = False  # another worker holds the lease now
    busy_seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "batches": self.batches,
            "events": self.events,
            "deliveries": self.deliveries,
            "attempts": self.attempts,
            "keys": self.keys,
        }


Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


def connector(conninfo: str, application_name: str) -> Connect:
    """A connection of the pass's own, outside the worker's pool: a batch
    holds it for its whole transaction, which a pool of four would take
    from the hot path. Nothing is prepared, so behind a transaction-mode
    pooler it needs no session either."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, prepare_threshold=None, application_name=application_name[:63]
        )
        async with conn:
            yield conn

    return connect


class Retention:
    """The retention maintenance service of one worker."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        connect: Connect,
        window: timedelta | None,
        holder: str,
        log: Any,
        *,
        batch_events: int = BATCH_EVENTS,
        duty: float = DUTY,
        lease_seconds: float = LEASE_SECONDS,
        interval: float | None = None,
        flush_commits: bool = False,
        per_batch: bool = False,
    ) -> None:
        self._pool = pool
        self._connect = connect
        self.window = window
        self.holder = holder
        self._log = log.bind(component="retention")
        self.batch_events = batch_events
        self.duty = duty
        self.lease_seconds = lease_seconds
        self.interval = pass_interval(window) if interval is None else interval
        # As the worker's own commits (OUTBOX_SYNCHRONOUS_COMMIT): a batch's
        # commit need not wait for its WAL (page images after a checkpoint)
        # to reach the disk; a crash can only undo deletes the next pass
        # redoes. A batch is several round trips in one transaction: a worker
        # frozen between two (SIGSTOP, a blocked event loop) would hold its
        # locks, and a migration's DDL waits for them, so the server ends such
        # a session after 10 s (purge_settings).
        self.flush_commits = flush_commits
        # True: a connection per batch from ``connect`` (a lent one, when a
        # process serves many databases over a bounded set), none held
        # through the pauses; False: one of the pass's own for all of them.
        self.per_batch = per_batch

    def _lease(self) -> dict[str, Any]:
        return {"name": NAME, "holder": self.holder, "lease_seconds": self.lease_seconds}

    async def _claim(self) -> datetime | None:
        async with self._pool.connection() as conn:
            rows = await db.fetch_async(conn, "lease_claim", self._lease())
        return rows[0]["acquired_at"] if rows else None

    async def _batch(
        self, conn: psycopg.AsyncConnection[Any], cutoff: datetime | None, after_id: int, totals: Totals
    ) -> dict[str, Any] | None:
        """One batch in one transaction, the lease renewed (and its row
        locked) first; None when another worker holds the lease now."""
        async with conn.transaction():
            await db.fetch_async(conn, "purge_settings", {"flush": self.flush_commits})
            if not await db.fetch_async(conn, "lease_renew", self._lease()):
                return None
            [before] = await db.fetch_async(conn, "purge_removed", {})
            [done] = await db.fetch_async(
                conn, "purge", {"older_than": cutoff, "after_id": after_id, "limit": self.batch_events}
            )
            [after] = await db.fetch_async(conn, "purge_removed", {})
        deliveries = after["deliveries"] - before["deliveries"]
        attempts = after["attempts"] - before["attempts"]
        totals.batches += 1
        totals.events += done["events"]
        totals.deliveries += deliveries
        totals.attempts += attempts
        totals.keys += done["keys"]
        totals.finished_at = after["at"]
        BATCHES.inc()
        for table, count in (
            ("events", done["events"]),
            ("deliveries", deliveries),
            ("delivery_attempts", attempts),
            ("idempotency_keys", done["keys"]),
        ):
            if count:
                REMOVED.labels(table).inc(count)
        if cutoff is not None and done["oldest"] is not None:
            LAG.set((cutoff - done["oldest"]).total_seconds())
        return done

    async def run_pass(self) -> Totals | None:
        """One pass if this worker wins the lease: batches until the window
        is reached and no expired key is left. None: another worker holds it."""
        started = await self._claim()
        if started is None:
            HOLDER.set(0)
            return None
        HOLDER.set(1)
        totals = Totals(started_at=started, finished_at=started)
        cutoff = None if self.window is None else started - self.window
        after_id = 0
        try:
            async with contextlib.AsyncExitStack() as stack:
                held = None if self.per_batch else await stack.enter_async_context(self._connect())
                while True:
                    began = time.monotonic()
                    if held is None:
                        async with self._connect() as conn:
                            done = await self._batch(conn, cutoff, after_id, totals)
                    else:
                        done = await self._batch(held, cutoff, after_id, totals)
                    elapsed = time.monotonic() - began
                    totals.busy_seconds += elapsed
                    if done is None:
                        totals.lost = True
                        break
                    after_id = done["last_id"]
                    if done["done"]:
                        cutoff = None  # events are done: only expired keys may be left
                    if cutoff is None and done["keys"] < self.batch_events:
                        break
                    pause = min(MAX_PAUSE, elapsed * (1 - self.duty) / self.duty)
                    await asyncio.sleep(pause)
            if not totals.lost:
                LAG.set(0)
        finally:
            await self._release(totals)
        return totals

    async def _release(self, totals: Totals) -> None:
        HOLDER.set(0)
        try:
            async with self._pool.connection() as conn:
                await db.fetch_async(conn, "lease_release", {**self._lease(), **totals.record()})
        except Exception as exc:  # the lease lapses by itself; only the record is lost
            self._log.warning("could not record the retention pass", error=str(exc).strip())
        LAST_PASS.set(time.time())
        removed = totals.events + totals.deliveries + totals.attempts + totals.keys
        (self._log.info if removed or totals.lost else self._log.debug)(
            "retention pass",
            window=None if self.window is None else self.window.total_seconds(),
            batches=totals.batches,
            events=totals.events,
            deliveries=totals.deliveries,
            attempts=totals.attempts,
            idempotency_keys=totals.keys,
            busy_s=round(totals.busy_seconds, 3),
            started_at=totals.started_at.isoformat(),
            finished_at=totals.finished_at.isoformat(),
            lost_lease=totals.lost,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.run_pass()
            except Exception as exc:
                self._log.warning("retention pass failed", error=str(exc).strip())
            await asyncio.sleep(self.interval)
