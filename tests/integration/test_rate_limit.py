"""Per-webhook rate limits across workers, and a 429 pausing its webhook."""

from __future__ import annotations

from typing import Any

import psycopg
from aiohttp import web

from outbox_worker import emit, webhooks
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker, until_settled


def busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any window of one second."""
    arrivals = sorted(arrivals)
    most, start = 0, 0
    for end, at in enumerate(arrivals):
        while at - arrivals[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_three_workers_keep_a_webhook_under_its_limit(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    limited = webhooks.create_webhook(conn, "v", receiver.url("/limited"), ["order.created"])
    webhooks.create_webhook(conn, "w", receiver.url("/free"), ["order.created"])
    conn.execute("update outbox.webhooks set rate_limit = 40 where id = %s", (limited.id,))
    with psycopg.connect(database_url) as app:
        for n in range(120):
            emit(app, "v", "order.created", {"n": n})
        for n in range(120):
            emit(app, "w", "order.created", {"n": n})
        app.commit()
    async with (
        running_worker(database_url, worker_id="a", poll_interval=0.2),
        running_worker(database_url, worker_id="b", poll_interval=0.2),
        running_worker(database_url, worker_id="c", poll_interval=0.2),
    ):
        await until_settled(database_url, 240, timeout=30)
    limited_at = [r.at for r in receiver.on("/limited")]
    free_at = [r.at for r in receiver.on("/free")]
    assert len(limited_at) == 120 and len(free_at) == 120
    assert busiest_second(limited_at) <= 44  # 40/s, with 10% for scheduling jitter on a loaded machine
    assert max(limited_at) - min(limited_at) >= 2.5  # 120 at 40/s: ~3 s, the limit's own pace
    assert max(free_at) - min(free_at) < 2.0  # the other owner's webhook is not held to it
    senders = conn.execute(
        "select count(distinct a.worker_id) from outbox.delivery_attempts a "
        "join outbox.deliveries d on d.id = a.delivery_id where d.webhook_id = %s",
        (limited.id,),
    ).fetchone()
    assert senders is not None and senders[0] >= 2  # the limit held across workers


async def test_a_429_pauses_its_webhook_and_does_not_count_toward_disabling(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    async def slow_down(_: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "1"})

    hook = webhooks.create_webhook(conn, "v", receiver.script("/busy", slow_down), ["order.created"])
    emit(conn, "v", "order.created", {"n": 0})
    async with running_worker(database_url, poll_interval=0.1, retry_schedule=[1.0, 1.0, 1.0]) as worker:
        await eventually(lambda: len(receiver.requests) == 1, what="the 429")
        assert worker.sender is not None
        await worker.sender.signals.claimed.next()  # the outcome is written before later claims matter
        await eventually(
            lambda: (
                conn.execute(
                    "select rate_next_at > now() + interval '0.5 s' from outbox.webhooks where id = %s",
                    (hook.id,),
                ).fetchone()
                == (True,)
            ),
            what="the webhook paused",
        )
        emit(conn, "v", "order.created", {"n": 1})  # due at once, but its webhook is paused
        await until_settled(database_url, 2, timeout=10)
    first, *rest = receiver.requests
    assert len(rest) == 2  # the retry and the new event
    assert min(r.at for r in rest) - first.at >= 0.9  # neither went before the Retry-After
    failing = conn.execute("select failing_since from outbox.webhooks where id = %s", (hook.id,)).fetchone()
    assert failing == (None,)  # throttling is not failing
