"""Ordering keys: one (webhook, key)'s deliveries reach the receiver one at
a time, in emit order; a failing head holds back only its own key."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import defaultdict
from typing import Any

import psycopg
from aiohttp import web

from outbox_worker import emit, webhooks
from tests.helpers import eventually, wait_for
from tests.receiver import Receiver
from tests.workers import running_worker, settled

COLUMNS = "owner_id, event_type, data, ordering_key"
KEYED = f"insert into outbox.events ({COLUMNS}) values (%s, %s, %s, %s) returning id"


def emit_keyed(conn: psycopg.Connection[Any], owner: str, key: str | None, data: dict[str, Any]) -> int:
    row = conn.execute(KEYED, (owner, "order.created", json.dumps(data), key)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_keys_events_take_their_ids_in_commit_order(database_url: str) -> None:
    """The second emitter of a key waits for the first to end, then draws a
    higher id: ids in a key follow commits, whatever order the inserts began."""
    with psycopg.connect(database_url) as first, psycopg.connect(database_url) as second:
        first_id = emit_keyed(first, "v", "order-1", {"n": 1})  # holds the key until it commits
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(emit_keyed(second, "v", "order-1", {"n": 2})))
        waiter.start()
        with psycopg.connect(database_url, autocommit=True) as other:
            unrelated = emit_keyed(other, "v", "order-2", {"n": 3})  # another key does not wait
            wait_for(
                lambda: (
                    other.execute(
                        "select count(*) from pg_locks where locktype = 'advisory' and not granted"
                    ).fetchone()
                    == (1,)
                ),
                what="the second emitter waiting for the key",
            )
        first.commit()
        waiter.join(10)
        second.commit()
    assert got and got[0] > first_id and got[0] > unrelated


class KeyedReceiver:
    """Answers per key: records the order of successes and the most requests
    of one key in flight at once."""

    def __init__(self, fail_rate: float, seed: int = 7, fail_keys: frozenset[str] = frozenset()) -> None:
        self.random = random.Random(seed)
        self.fail_rate = fail_rate
        self.fail_keys = fail_keys
        self.running: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.succeeded: dict[str, list[int]] = defaultdict(list)

    async def __call__(self, request: web.Request) -> web.Response:
        data = json.loads(await request.read())["data"]
        key = data["key"]
        self.running[key] += 1
        self.peak[key] = max(self.peak[key], self.running[key])
        try:
            await asyncio.sleep(self.random.uniform(0, 0.01))
            if key in self.fail_keys or self.random.random() < self.fail_rate:
                return web.Response(status=500)
            if data["n"] not in self.succeeded[key]:
                self.succeeded[key].append(data["n"])
            return web.Response(text="ok")
        finally:
            self.running[key] -= 1


async def test_two_workers_keep_each_keys_order_through_failures(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    answer = KeyedReceiver(fail_rate=0.2)
    url = receiver.script("/k", *[answer] * 10_000)
    webhooks.create_webhook(conn, "v", url, ["order.created"])
    keys = [f"order-{k}" for k in range(10)]
    per_key = 8
    with psycopg.connect(database_url) as app:
        for n in range(per_key):
            for key in keys:
                emit_keyed(app, "v", key, {"key": key, "n": n})
            app.commit()
    fast = {"retry_schedule": [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]}
    async with (
        running_worker(database_url, worker_id="a", **fast),
        running_worker(database_url, worker_id="b", **fast),
    ):

        async def done() -> bool:
            return await asyncio.to_thread(settled, database_url, len(keys) * per_key)

        await eventually(done, timeout=60, interval=0.1, what="every keyed delivery settled")
    failed = conn.execute("select count(*) from outbox.deliveries where status = 'failed'").fetchone()
    assert failed == (0,)  # 11 attempts at 20% failures: none ran out
    for key in keys:
        assert answer.succeeded[key] == list(range(per_key)), key
        assert answer.peak[key] == 1, key
    # Which worker sent what is up to their claims (on a busy machine one
    # may send all); the SIGKILL test in tests/e2e/test_crash.py runs two
    # processes that both send.


async def test_a_failing_head_holds_back_only_its_own_key(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    answer = KeyedReceiver(fail_rate=0.0, fail_keys=frozenset({"stuck"}))
    url = receiver.script("/k", *[answer] * 1000)
    webhooks.create_webhook(conn, "v", url, ["order.created"])
    with psycopg.connect(database_url) as app:
        for n in range(3):
            emit_keyed(app, "v", "stuck", {"key": "stuck", "n": n})
            emit_keyed(app, "v", "free", {"key": "free", "n": n})
            emit(app, "v", "order.created", {"key": "unkeyed", "n": n})
        app.commit()
    async with running_worker(database_url, retry_schedule=[0.3, 0.3, 0.3]):
        await eventually(
            lambda: len(answer.succeeded["free"]) == 3 and len(answer.succeeded["unkeyed"]) == 3,
            timeout=10,
            what="the other key and the unkeyed events",
        )
        stuck = conn.execute(
            "select e.data->>'n', d.status::text, d.attempts from outbox.deliveries d "
            "join outbox.events e on e.id = d.event_id where e.ordering_key = 'stuck' order by e.id"
        ).fetchall()
        assert [s[0] for s in stuck] == ["0", "1", "2"]
        assert all(attempts == 0 for _, _, attempts in stuck[1:])  # held behind the failing head

        async def all_stuck_failed() -> bool:
            rows = await asyncio.to_thread(
                lambda: conn.execute(
                    "select count(*) from outbox.deliveries d join outbox.events e on e.id = d.event_id "
                    "where e.ordering_key = 'stuck' and d.status = 'failed'"
                ).fetchone()
            )
            return rows == (3,)

        # Once the head has failed for good, the next of its key goes (and fails too, here).
        await eventually(all_stuck_failed, timeout=20, interval=0.1, what="the stuck key failing in turn")
    order = conn.execute(
        "select e.data->>'n' from outbox.delivery_attempts a "
        "join outbox.deliveries d on d.id = a.delivery_id join outbox.events e on e.id = d.event_id "
        "where e.ordering_key = 'stuck' order by a.attempted_at"
    ).fetchall()
    assert [n for (n,) in order] == ["0"] * 4 + ["1"] * 4 + ["2"] * 4
    assert answer.peak["stuck"] == 1
