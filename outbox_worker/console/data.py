"""The console's reads that the HTTP API has no route for, over named queries in sql/queries.sql.

Webhooks, deliveries, redelivery and the rest go through the same wrappers
the HTTP API uses (:mod:`outbox_worker.webhooks`, the ``*_delivery`` queries).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from outbox_worker import db


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    attempts: int
    successes: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None


@dataclass(slots=True)
class Health:
    """One webhook's attempts over a window: the totals and each bucket (empty ones included)."""

    total: Bucket
    buckets: list[Bucket] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    span: timedelta
    bucket: timedelta


HOUR = Window("last hour", timedelta(hours=1), timedelta(minutes=5))
DAY = Window("last day", timedelta(days=1), timedelta(hours=1))


def _bucket(row: db.Row, start: datetime) -> Bucket:
    return Bucket(start, row["attempts"], row["successes"], row["p50_ms"], row["p99_ms"])


async def health(
    conn: db.AsyncConnection, owner_id: str, window: Window, now: datetime
) -> dict[uuid.UUID, Health]:
    """Per webhook of the owner, its attempts in ``window`` up to ``now``
    (webhooks without any are absent)."""
    since = now - window.span
    params = {"owner_id": owner_id, "since": since, "bucket_seconds": window.bucket.total_seconds()}
    rows = await db.fetch_async(conn, "webhook_health", params)
    count = round(window.span / window.bucket)
    starts = [since + window.bucket * i for i in range(count)]
    found: dict[uuid.UUID, Health] = {}
    by_start: dict[uuid.UUID, dict[datetime, Bucket]] = {}
    for row in rows:
        if row["bucket_start"] is None:
            found[row["webhook_id"]] = Health(_bucket(row, since))
        else:
            by_start.setdefault(row["webhook_id"], {})[row["bucket_start"]] = _bucket(
                row, row["bucket_start"]
            )
    for webhook_id, one in found.items():
        known = by_start.get(webhook_id, {})
        one.buckets = [known.get(s) or Bucket(s, 0, 0, None, None) for s in starts]
    return found


async def log_counts(conn: db.AsyncConnection, owner_id: str, webhook_id: uuid.UUID) -> tuple[int, int]:
    """(deliveries, attempts) that deleting the webhook deletes."""
    row = (
        await db.fetch_async(conn, "webhook_log_counts", {"owner_id": owner_id, "webhook_id": webhook_id})
    )[0]
    return int(row["deliveries"]), int(row["attempts"])


async def alive_workers(conn: db.AsyncConnection) -> list[db.Row]:
    return await db.fetch_async(conn, "alive_workers", {})


async def queue(conn: db.AsyncConnection) -> tuple[list[db.Row], db.Row]:
    """Every webhook's queue (owner, pending, retrying, in flight, failed,
    oldest pending) and the event backlog."""
    stats = await db.fetch_async(conn, "queue_stats", {})
    backlog = (await db.fetch_async(conn, "event_backlog", {}))[0]
    return stats, backlog


async def event_types(conn: db.AsyncConnection) -> list[db.Row]:
    return await db.fetch_async(conn, "list_event_types", {})


async def owners(conn: db.AsyncConnection) -> list[str]:
    """Every owner with a webhook, for an operator's owner picker."""
    stats, _ = await queue(conn)
    return sorted({row["owner_id"] for row in stats})
