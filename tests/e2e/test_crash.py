"""Real worker processes killed, stopped and cut off from a restarting Postgres."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from outbox_worker import embedded, migrate, webhooks
from tests.conftest import TEST_CONFIG
from tests.helpers import eventually, orphans
from tests.receiver import Receiver
from tests.workers import delivery_states, kill, running_worker, settled, spawn_worker


async def until(condition: Any, timeout: float = 60, what: str = "") -> None:
    async def check() -> bool:
        return bool(await asyncio.to_thread(condition))

    await eventually(check, timeout=timeout, interval=0.1, what=what)


def emit_many(database_url: str, owner: str, count: int) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "select outbox.emit(%s, 'order.created', jsonb_build_object('n', g)) "
            "from generate_series(1, %s) g",
            (owner, count),
        )


async def test_sigkill_of_a_worker_loses_nothing(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    events, hooks = 2000, 2

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.002)  # long enough for the kill to land mid-run
        return web.Response(text="ok")

    for i in range(hooks):
        receiver.script(f"/h{i}", *[slowish] * (events * 2))
        webhooks.create_webhook(conn, "shop", receiver.url(f"/h{i}"), ["order.created"])
    emit_many(database_url, "shop", events)
    workers = [
        spawn_worker(
            database_url,
            f"crash-{i}",
            lease_seconds=2.0,
            request_timeout=1.0,
            concurrency=64,
            owner_share=1.0,
            batch_size=100,
        )
        for i in range(2)
    ]
    try:
        await eventually(
            lambda: len(receiver.requests) >= events // 2,
            timeout=60,
            what="a quarter delivered",
        )
        # Killed while it holds leases, so that the kill lands mid-run: with
        # a fast client the other worker could have the rest in hand by now.
        await eventually(
            lambda: (
                conn.execute(
                    "select count(*) from outbox.deliveries "
                    "where leased_by = 'crash-0' and status = 'pending'"
                ).fetchone()
                != (0,)
            ),
            timeout=30,
            interval=0.001,
            what="crash-0 holding leases",
        )
        kill(workers[0], signal.SIGKILL)
        assert workers[0].wait(10) == -signal.SIGKILL
        # What it held when it died: leases no outcome released. Nobody else
        # may take them before they end (2 s), so this is exact.
        [(held,)] = conn.execute(
            "select count(*) from outbox.deliveries where leased_by = 'crash-0' and status = 'pending'"
        ).fetchall()
        await until(lambda: settled(database_url, events * hooks), what="every delivery settled")
    finally:
        for w in workers:
            kill(w, signal.SIGTERM)
        for w in workers:
            w.wait(30)
    received = Counter((r.path, r.headers["webhook-id"]) for r in receiver.requests)
    expected = {(f"/h{i}", f"evt_{e}") for i in range(hooks) for e in range(1, events + 1)}
    assert set(received) == expected  # every (event, webhook) pair, at least once
    assert delivery_states(database_url) == {"delivered": events * hooks}
    assert orphans(conn) == (0, 0, 0)
    duplicates = sum(received.values()) - len(expected)
    print(f"\nSIGKILL mid-run: {len(expected)} pairs delivered, {duplicates} duplicates, {held} held")
    # Duplicates only where the kill made the outcome unknown: at most what
    # the dead worker held. Not a fixed 64 in flight + a batch of 100: the
    # sender keeps sending while a completer write is slow, so under load
    # outcomes sent but not yet written passed 200 (2026-12-03).
    assert held > 0 and duplicates <= held


async def test_sigterm_finishes_in_flight_requests_and_exits_zero(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    slow, entered = receiver.slow(1.0)
    webhooks.create_webhook(conn, "v", receiver.script("/slow", slow), ["order.created"])
    emit_many(database_url, "v", 1)
    worker = spawn_worker(database_url, "graceful", shutdown_grace=10.0)
    await asyncio.wait_for(entered.wait(), 30)
    kill(worker, signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 30) == 0
    assert delivery_states(database_url) == {"delivered": 1}
    assert conn.execute("select count(*) from outbox.deliveries where leased_by is not null").fetchone() == (
        0,
    )


async def test_sigterm_hands_back_what_cannot_finish_within_the_grace(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "v", receiver.script("/hang", *["hang"] * 5), ["order.created"])
    emit_many(database_url, "v", 5)
    worker = spawn_worker(
        database_url, "impatient", shutdown_grace=0.5, request_timeout=60.0, lease_seconds=120.0
    )
    await eventually(lambda: len(receiver.on("/hang")) == 5, timeout=30)
    kill(worker, signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 30) == 0
    rows = conn.execute(
        "select status::text, leased_by, attempts, next_attempt_at <= now() from outbox.deliveries"
    ).fetchall()
    assert rows == [("pending", None, 0, True)] * 5  # back in the queue at once, no attempt spent
    # The next worker picks them straight up.
    async with running_worker(database_url):
        await until(lambda: settled(database_url, 5), what="handed-back deliveries delivered")


@pytest.fixture
def throwaway_postgres(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A cluster this test may restart (never the shared server)."""
    url, server = embedded.start(tmp_path / "pg")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TEST_CONFIG)
    try:
        yield url, server
    finally:
        server.cleanup()


async def test_the_worker_rides_out_a_postgres_restart(
    throwaway_postgres: tuple[str, Any], receiver: Receiver
) -> None:
    url, server = throwaway_postgres

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return web.Response(text="ok")

    with psycopg.connect(url, autocommit=True) as conn:
        webhooks.create_webhook(conn, "v", receiver.script("/h", *[slow] * 1000), ["order.created"])
    async with running_worker(
        url, poll_interval=0.2, concurrency=4, owner_share=1.0, batch_size=20
    ) as worker:
        await asyncio.to_thread(emit_many, url, "v", 300)
        await eventually(lambda: len(receiver.requests) >= 20, timeout=30)
        await asyncio.to_thread(embedded.restart, server)
        assert len(receiver.requests) < 300  # the restart landed mid-run
        await asyncio.to_thread(emit_many, url, "v", 300)  # committed after the restart
        await until(lambda: settled(url, 600), what="all 600 delivered after the restart")
        assert worker.listener is not None
        await eventually(lambda: worker.listener.connected, what="LISTEN back")  # type: ignore[union-attr]
        assert worker.listener.reconnects >= 1
    received = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(received) == 600


async def test_sigkill_keeps_each_keys_order(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """Keyed events, two worker processes, one killed mid-run: every key's
    first successes still arrive in emit order (a delivery whose outcome the
    dead worker never recorded may arrive twice, never out of turn)."""
    keys, per_key = 20, 30
    firsts: dict[str, list[int]] = {}

    async def record(request: web.Request) -> web.Response:
        data = (await request.json())["data"]
        await asyncio.sleep(0.002)
        seen = firsts.setdefault(data["key"], [])
        if data["n"] not in seen:
            seen.append(data["n"])
        return web.Response(text="ok")

    receiver.script("/keyed", *[record] * (keys * per_key * 3))
    webhooks.create_webhook(conn, "shop", receiver.url("/keyed"), ["order.created"])
    with psycopg.connect(database_url) as app:
        app.execute(
            "insert into outbox.events (owner_id, event_type, data, ordering_key) "
            "select 'shop', 'order.created', jsonb_build_object('key', 'k' || k, 'n', n), 'k' || k "
            "from generate_series(0, %s) n, generate_series(1, %s) k order by n, k",
            (per_key - 1, keys),
        )
    workers = [
        spawn_worker(database_url, f"keyed-{i}", lease_seconds=2.0, request_timeout=1.0) for i in range(2)
    ]
    try:
        await eventually(
            lambda: len(receiver.requests) >= keys * per_key // 3, timeout=60, what="a third sent"
        )
        kill(workers[0], signal.SIGKILL)
        assert workers[0].wait(10) == -signal.SIGKILL
        await until(lambda: settled(database_url, keys * per_key), what="every keyed delivery settled")
    finally:
        for w in workers:
            kill(w, signal.SIGTERM)
        for w in workers:
            w.wait(30)
    assert sorted(firsts) == sorted(f"k{k}" for k in range(1, keys + 1))
    for key, order in firsts.items():
        assert order == list(range(per_key)), key
