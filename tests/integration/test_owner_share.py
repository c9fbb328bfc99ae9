"""One owner's slow receivers hold at most its share of a worker's slots:
the other owners' deliveries go out at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from outbox_worker import emit, webhooks
from tests.helpers import eventually
from tests.receiver import Held, Receiver
from tests.workers import running_worker, until_settled


async def test_an_owner_with_five_hanging_receivers_leaves_room_for_the_others(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    release = asyncio.Event()
    hanging = [Held(release.wait) for _ in range(5)]
    # Five hosts (five origins), so the per-host limit alone would let them
    # hold 5 x 8 = 40 requests: more than the worker's 32 slots.
    hosts = [await Receiver().start() for _ in range(5)]
    other = await Receiver().start()
    try:
        for host, held in zip(hosts, hanging, strict=True):
            webhooks.create_webhook(conn, "greedy", host.script("/h", *[held] * 100), ["order.created"])
        webhooks.create_webhook(conn, "patient", other.url("/h"), ["order.created"])
        for i in range(40):
            emit(conn, "greedy", "order.created", {"i": i})
        async with running_worker(
            database_url, concurrency=32, per_host_concurrency=8, request_timeout=30.0, lease_seconds=60.0,
            owner_share=0.25,
        ) as worker:  # fmt: skip
            ledger = worker.sender.ledger if worker.sender else None
            assert ledger is not None and ledger.per_owner == 8  # a quarter of the slots

            def greedy_settled() -> bool:
                dispatched = conn.execute("select count(*) from outbox.events where dispatched_at is null")
                return (
                    dispatched.fetchone() == (0,)
                    and ledger.in_flight >= ledger.per_owner
                    and sum(h.running for h in hanging) == ledger.in_flight
                )

            await eventually(greedy_settled, what="the greedy owner's requests hanging")
            committed = time.perf_counter()
            emit(conn, "patient", "order.created", {"i": "mine"})
            await eventually(lambda: other.on("/h"), timeout=5, what="the other owner's delivery")
            latency = other.on("/h")[0].at - committed  # both on perf_counter
            assert sum(h.running for h in hanging) == ledger.per_owner  # its share, no more
            release.set()
        assert latency < 1.0, latency
    finally:
        release.set()
        for receiver in (*hosts, other):
            await receiver.stop()


async def test_one_owner_backlog_drains_on_wake_ups_not_the_poll_interval(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Each claim takes at most an owner's share; the rest of that owner's
    backlog must be claimed as its requests end, not at the next poll. A claim
    capped by the share left the sender thinking nothing was due, and one
    owner's five webhooks drained at a claim of 8 per poll interval."""
    receiver = await Receiver().start()
    try:
        for i in range(5):
            webhooks.create_webhook(conn, "busy", receiver.url(f"/h{i}"), ["order.created"])
        for i in range(100):
            emit(conn, "busy", "order.created", {"i": i})
        # A poll interval longer than the deadline: only wake-ups can drain it.
        async with running_worker(
            database_url, concurrency=32, per_host_concurrency=8, owner_share=0.25, poll_interval=600.0
        ) as worker:
            assert worker.sender is not None and worker.sender.ledger.per_owner == 8
            await until_settled(database_url, 500, timeout=30)
        assert len({(r.path, r.headers["webhook-id"]) for r in receiver.requests}) == 500
    finally:
        await receiver.stop()
