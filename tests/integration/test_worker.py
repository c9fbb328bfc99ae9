"""End to end: real Postgres, a real worker, a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import shutil
import subprocess
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
import structlog
from aiohttp import web
from standardwebhooks import Webhook as StandardWebhook

from outbox_worker import db, emit, migrate, secretbox, webhooks
from outbox_worker.attempt import Attempter
from outbox_worker.client import HttpClient
from outbox_worker.jobs import Job, Outcome, timeout_tick
from outbox_worker.sender import Sender
from outbox_worker.sql import query
from outbox_worker.worker import Worker
from tests.helpers import eventually, positional, wait_for
from tests.receiver import Held, Receiver
from tests.workers import delivery_states, open_policy, running_worker, settings, until_settled


def attempts_of(conn: psycopg.Connection[Any], url: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select attempt, status_code, error_class, delivery_status::text from outbox.delivery_log "
        "where url = %s order by attempt",
        (url,),
    ).fetchall()


def leased_by_a_dead_worker(
    conn: psycopg.Connection[Any], event_id: int, webhook_id: Any, seconds: float
) -> None:
    """A delivery whose lease, held by a worker that died, expires in ``seconds``."""
    conn.execute(
        "insert into outbox.deliveries (event_id, webhook_id, next_attempt_at, leased_until, leased_by) "
        "select %s, %s, t, t, 'dead-worker' from (select now() + make_interval(secs => %s) as t) x",
        (event_id, webhook_id, seconds),
    )


def emit_orders(database_url: str, owner: str, count: int) -> None:
    """``count`` order.created events for ``owner``, committed together."""
    with psycopg.connect(database_url) as app:
        for i in range(count):
            emit(app, owner, "order.created", {"i": i})
        app.commit()


NODE_CHECK = """
const { createHmac } = require("crypto");
let input = ""; process.stdin.on("data", d => input += d).on("end", () => {
  const { raw, signature, secret } = JSON.parse(input);
  const req = { body: JSON.parse(raw) };           // what express.json() hands the vendor API's handler
  const body = JSON.stringify(req.body);           // the vendor API's re-serialisation
  const expected = createHmac("sha256", secret).update(body).digest("hex");
  process.stdout.write(signature === expected ? "valid" : "invalid");
});
"""


def node_check(raw: bytes, signature: str, secret: str) -> str:
    """Run the vendor API's verification code, verbatim in substance, in Node."""
    node = shutil.which("node")
    assert node, "node is needed to run the vendor API's JavaScript check"
    payload = json.dumps({"raw": raw.decode(), "signature": signature, "secret": secret})
    return subprocess.run(
        [node, "-e", NODE_CHECK], input=payload, capture_output=True, text=True, check=True
    ).stdout


async def test_committed_events_reach_every_matching_webhook(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    orders = webhooks.create_webhook(conn, "shop", receiver.url("/orders"), ["order.*"])
    customers = webhooks.create_webhook(conn, "shop", receiver.url("/customers"), ["customer.created"])
    disabled = webhooks.create_webhook(conn, "shop", receiver.url("/disabled"), ["*"])
    webhooks.update_webhook(conn, "shop", disabled.id, enabled=False)
    deleted = webhooks.create_webhook(conn, "shop", receiver.url("/deleted"), ["*"])
    webhooks.delete_webhook(conn, "shop", deleted.id)
    webhooks.create_webhook(conn, "other-shop", receiver.url("/other"), ["*"])

    with psycopg.connect(database_url) as app:
        order_id = emit(app, "shop", "order.created", {"id": "clx1", "total": 20.0, "note": "Grüße €"})
        emit(app, "shop", "customer.created", {"id": "cus_1"})
        app.commit()
        emit(app, "shop", "order.status_changed", {"id": "rolled-back"})
        app.rollback()

    async with running_worker(database_url):
        await until_settled(database_url, 2)

    assert sorted(r.path for r in receiver.requests) == ["/customers", "/orders"]
    [got] = receiver.on("/orders")
    assert json.loads(got.body)["data"] == {"id": "clx1", "total": 20, "note": "Grüße €"}
    assert got.headers["webhook-id"] == f"evt_{order_id}"
    assert got.headers["Content-Type"] == "application/json"
    # The vendor API's check (hex HMAC of the body with the secret), in Python and in Node.
    expected = hmac.new(orders.secret.encode(), got.body, hashlib.sha256).hexdigest()
    assert got.headers["X-Brutlers-Signature"] == expected
    assert node_check(got.body, got.headers["X-Brutlers-Signature"], orders.secret) == "valid"
    assert node_check(got.body, got.headers["X-Brutlers-Signature"], customers.secret) == "invalid"
    # The standardwebhooks library verifies the same request.
    StandardWebhook(orders.secret).verify(got.body, dict(got.headers))
    with pytest.raises(Exception, match="signature"):
        StandardWebhook(customers.secret).verify(got.body, dict(got.headers))
    assert delivery_states(database_url) == {"delivered": 2}
    assert attempts_of(conn, receiver.url("/orders")) == [(1, 200, None, "delivered")]


async def test_body_matches_the_vendor_api_shape(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.status_changed"])
    data = {
        "id": "clx1234567890abcdef",
        "status": "FITTING_READY",
        "previousStatus": "IN_PRODUCTION",
        "customerId": "clx0987654321fedcba",
        "updatedAt": "2026-04-15T10:00:00.000Z",
    }
    emit(conn, "v", "order.status_changed", data)
    async with running_worker(database_url):
        await until_settled(database_url, 1)
    body = receiver.requests[0].body
    assert body.startswith(b'{"event":"order.status_changed","data":{')
    parsed = json.loads(body)
    assert list(parsed) == ["event", "data", "timestamp"]
    assert parsed["data"] == data
    assert len(parsed["timestamp"]) == 24 and parsed["timestamp"].endswith("Z")
    assert b" " not in body.replace(b"FITTING_READY", b"")  # compact separators


async def test_body_bytes_are_identical_on_every_retry(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    hook = webhooks.create_webhook(conn, "v", receiver.script("/flaky", 500, 500), ["order.created"])
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url):
        await until_settled(database_url, 1)
    bodies = {r.body for r in receiver.on("/flaky")}
    ids = {r.headers["webhook-id"] for r in receiver.on("/flaky")}
    assert len(receiver.on("/flaky")) == 3 and len(bodies) == 1 and len(ids) == 1
    for request in receiver.on("/flaky"):  # each attempt is signed afresh (timestamp) and verifies
        StandardWebhook(hook.secret).verify(request.body, dict(request.headers))


@pytest.mark.parametrize(
    ("behaviour", "error_class", "status_code"),
    [(500, "http", 500), (302, "redirect", 302), ("hang", "timeout", None)],
)
async def test_a_failing_receiver_gets_exactly_four_attempts_on_the_schedule(
    database_url: str,
    conn: psycopg.Connection[Any],
    receiver: Receiver,
    behaviour: Any,
    error_class: str,
    status_code: int | None,
) -> None:
    url = receiver.script("/bad", *[behaviour] * 10)
    webhooks.create_webhook(conn, "v", url, ["order.created"])
    emit(conn, "v", "order.created", {"id": 1})
    schedule = [0.2, 0.4, 0.6]
    async with running_worker(database_url, retry_schedule=schedule, request_timeout=0.5):
        await until_settled(database_url, 1)
    arrivals = [r.at for r in receiver.on("/bad")]
    assert len(arrivals) == 4
    assert not receiver.on("/elsewhere")  # redirects are not followed
    timeout_allowance = 0.5 if behaviour == "hang" else 0.0
    for gap, delay in zip([b - a for a, b in itertools.pairwise(arrivals)], schedule, strict=True):
        assert gap >= delay + timeout_allowance - 0.02  # never earlier than the schedule
    assert delivery_states(database_url) == {"failed": 1}
    assert attempts_of(conn, url) == [(n, status_code, error_class, "failed") for n in (1, 2, 3, 4)]


async def test_a_receiver_that_recovers_on_attempt_three(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    url = receiver.script("/flaky", 503, 500)
    webhooks.create_webhook(conn, "v", url, ["order.created"])
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url):
        await until_settled(database_url, 1)
    assert delivery_states(database_url) == {"delivered": 1}
    assert attempts_of(conn, url) == [
        (1, 503, "http", "delivered"),
        (2, 500, "http", "delivered"),
        (3, 200, None, "delivered"),
    ]
    row = conn.execute("select last_success_at is not null, failing_since from outbox.webhooks").fetchone()
    assert row == (True, None)


async def test_retry_after_is_honoured(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    async def slow_down(request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": "1"})

    webhooks.create_webhook(conn, "v", receiver.script("/busy", slow_down), ["order.created"])
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url, retry_schedule=[0.1, 2.0, 2.0]):
        await until_settled(database_url, 1)
    first, second = (r.at for r in receiver.on("/busy"))
    assert second - first >= 0.98  # the schedule alone would have retried after 0.1 s


async def test_410_gone_disables_the_webhook_and_tells_the_owner(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    gone = webhooks.create_webhook(conn, "v", receiver.script("/gone", 410), ["order.created"])
    webhooks.create_webhook(conn, "v", receiver.url("/ops"), ["webhook.disabled"])
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url):
        await until_settled(database_url, 2)
    assert len(receiver.on("/gone")) == 1
    hook = webhooks.get_webhook(conn, "v", gone.id)
    assert not hook.enabled and hook.disabled_reason == "receiver answered 410 Gone"
    [notice] = receiver.on("/ops")
    payload = json.loads(notice.body)
    assert payload["event"] == "webhook.disabled"
    assert (
        payload["data"]["webhook_id"] == str(gone.id)
        and payload["data"]["reason"] == "receiver answered 410 Gone"
    )


async def test_a_webhook_failing_too_long_is_disabled(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    dead = webhooks.create_webhook(conn, "v", receiver.script("/dead", *[500] * 50), ["order.created"])
    webhooks.create_webhook(conn, "v", receiver.url("/ops"), ["webhook.disabled"])
    healthy = webhooks.create_webhook(conn, "v", receiver.url("/healthy"), ["order.created"])
    for i in range(3):
        emit(conn, "v", "order.created", {"id": i})
    async with running_worker(database_url, retry_schedule=[0.3, 30, 30], disable_after=1.0):
        await eventually(
            lambda: asyncio.to_thread(lambda: receiver.on("/ops")), timeout=15, what="webhook.disabled notice"
        )
    assert not webhooks.get_webhook(conn, "v", dead.id).enabled
    assert webhooks.get_webhook(conn, "v", healthy.id).enabled
    assert len(receiver.on("/healthy")) == 3  # one dead endpoint never held the others back
    dead_states = conn.execute(
        "select status::text, last_error from outbox.deliveries where webhook_id = %s", (dead.id,)
    ).fetchall()
    assert {s for s, _ in dead_states} == {"failed"}
    assert all(e.startswith("webhook disabled: no successful delivery") for _, e in dead_states)


async def test_notify_wakes_an_idle_worker_also_after_its_listen_connection_is_killed(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"])
    poll = 10.0  # anything arriving well before this came from NOTIFY
    latencies = []
    async with running_worker(database_url, poll_interval=poll) as worker:
        listener = worker.listener
        assert listener is not None
        await eventually(lambda: listener.connected, what="LISTEN up")
        for round_ in range(2):
            await asyncio.sleep(0.2)  # let the worker go idle
            before = len(receiver.requests)
            committed = time.perf_counter()
            await asyncio.to_thread(emit, conn, "v", "order.created", {"round": round_})
            await eventually(lambda: len(receiver.requests) > before, timeout=poll / 2)  # noqa: B023 (awaited at once)
            latencies.append((receiver.requests[-1].at - committed) * 1000)
            if round_ == 0:
                killed = conn.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where datname = current_database() and query = 'listen outbox_events'"
                ).fetchall()
                assert killed == [(True,)]
                await eventually(
                    lambda: listener.reconnects >= 1 and listener.connected,
                    what="listener reconnected",
                )
    print(
        f"\ncommit-to-receipt over NOTIFY: {latencies[0]:.1f} ms; "
        f"after LISTEN was killed: {latencies[1]:.1f} ms"
    )


async def test_an_expired_lease_is_claimed_again(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    hook = webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"])
    # A delivery leased by a worker that died: its lease runs out in 0.5 s.
    event_id = emit(conn, "v", "order.created", {"orphan": True})
    conn.execute(
        "update outbox.events set dispatched_at = now(), body = convert_to('{\"orphan\":true}', 'UTF8') "
        "where id = %s",
        (event_id,),
    )
    leased_by_a_dead_worker(conn, event_id, hook.id, 0.5)
    async with running_worker(database_url):
        await until_settled(database_url, 1)
    assert receiver.requests[0].body == b'{"orphan":true}'
    assert conn.execute("select leased_by, status::text from outbox.deliveries").fetchone() == (
        None,
        "delivered",
    )


async def test_dispatch_stores_the_bytes_it_sends(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "v", receiver.url("/a"), ["order.created"])
    webhooks.create_webhook(conn, "v", receiver.url("/b"), ["order.created"])
    event_id = emit(conn, "v", "order.created", {"id": "ord_1", "total": 20.0, "10": "x", "2": "y"})
    async with running_worker(database_url):
        await until_settled(database_url, 2)
    (stored,) = conn.execute("select body from outbox.events where id = %s", (event_id,)).fetchone() or (
        None,
    )
    assert stored is not None
    assert [r.body for r in receiver.requests] == [bytes(stored)] * 2
    assert json.loads(stored)["data"] == {"2": "y", "10": "x", "id": "ord_1", "total": 20}
    assert bytes(stored).startswith(
        b'{"event":"order.created","data":{"2":"y","10":"x","id":"ord_1","total":20}'
    )


async def test_a_dispatcher_that_died_before_storing_bodies_loses_nothing(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """dispatch commits the deliveries, store_bodies follows: a worker killed
    in between leaves body NULL; the next claimer encodes the same bytes."""
    from outbox_worker.signing import encode_body, load_payload

    hook = webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"])
    event_id = emit(conn, "v", "order.created", {"n": 1.5, "1": True})
    conn.execute("update outbox.events set dispatched_at = now() where id = %s", (event_id,))
    leased_by_a_dead_worker(conn, event_id, hook.id, 0.3)
    async with running_worker(database_url):
        await until_settled(database_url, 1)
    row = conn.execute(
        "select event_type, data::text, created_at, body from outbox.events where id = %s", (event_id,)
    ).fetchone()
    assert row is not None
    expected = encode_body(row[0], load_payload(row[1]), row[2])
    assert receiver.requests[0].body == expected
    assert bytes(row[3]) == expected  # the claimer fixed the bytes for later retries


def test_fan_out_is_idempotent(database_url: str, conn: psycopg.Connection[Any]) -> None:
    webhooks.create_webhook(conn, "v", "https://example.com/a", ["*"])
    webhooks.create_webhook(conn, "v", "https://example.com/b", ["order.*"])
    event_id = emit(conn, "v", "order.created", {})
    params = {
        "limit": 10,
        "lease_limit": 0,
        "busy_webhooks": [],
        "busy_owners": [],
        "per_owner": 10_000,
        "per_webhook": 64,
        "lease_seconds": 30,
        "worker_id": "w",
        "traced": False,
    }
    first = conn.execute(query("dispatch"), params).fetchall()
    conn.execute("update outbox.events set dispatched_at = null where id = %s", (event_id,))
    again = conn.execute(query("dispatch"), params).fetchall()  # a re-run of the same dispatch
    assert len(first) == 2
    assert len(again) == 1  # the event, with no new delivery
    assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (2,)


async def test_an_event_for_an_owner_without_webhooks_is_dispatched_quietly(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    emit(conn, "lonely", "order.created", {"id": 1})
    async with running_worker(database_url):
        await eventually(
            lambda: asyncio.to_thread(
                lambda: (
                    conn.execute("select count(*) from outbox.events where dispatched_at is null").fetchone()
                    == (0,)
                )
            )
        )
    assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (0,)


async def test_stopping_ends_a_task_that_lost_its_cancellation() -> None:
    # What Python 3.11's wait_for does inside psycopg_pool's getconn when the
    # connection and the cancel arrive together: the CancelledError is dropped
    # and the caller's loop goes on. A worker stopped that way never returned.
    rounds = 0

    async def loses_one_cancel() -> None:
        nonlocal rounds
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        while True:
            rounds += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loses_one_cancel())
    await asyncio.sleep(0)
    await asyncio.wait_for(db.stop_tasks([task], again_after=0.05), 5)
    assert task.cancelled()
    assert rounds >= 1  # it really did carry on after the first cancel


async def test_a_webhook_deleted_while_in_flight_loses_nothing_else(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    slow, entered = receiver.slow(0.5)
    doomed = webhooks.create_webhook(conn, "v", receiver.script("/slow", slow), ["order.created"])
    webhooks.create_webhook(conn, "v", receiver.url("/kept"), ["order.created"])
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url) as worker:
        await asyncio.wait_for(entered.wait(), 10)
        await asyncio.to_thread(webhooks.delete_webhook, conn, "v", doomed.id)
        await eventually(lambda: worker.sender and worker.sender.in_flight == 0)
        await until_settled(database_url, 1)
        await eventually(lambda: worker.completer and worker.completer.backlog == 0)
    assert delivery_states(database_url) == {"delivered": 1}
    assert len(receiver.on("/kept")) == 1


def test_wait_for_helper_reports_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, timeout=0.05, what="the impossible")


async def test_rotation_overlap_sends_both_signatures(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    created = webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"])
    rotated = webhooks.rotate_webhook_secret(conn, "v", created.id)
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url):
        await until_settled(database_url, 1)
    [got] = receiver.requests
    StandardWebhook(rotated.secret).verify(got.body, dict(got.headers))
    StandardWebhook(created.secret).verify(got.body, dict(got.headers))
    assert node_check(got.body, got.headers["X-Brutlers-Signature"], rotated.secret) == "valid"
    assert node_check(got.body, got.headers["X-Brutlers-Signature-Previous"], created.secret) == "valid"
    # Once the overlap is over, only the new secret signs.
    conn.execute("update outbox.webhooks set previous_secret_expires_at = now() - interval '1 s'")
    emit(conn, "v", "order.created", {"id": 2})
    async with running_worker(database_url):
        await until_settled(database_url, 2)
    later = receiver.requests[-1]
    assert "X-Brutlers-Signature-Previous" not in later.headers
    with pytest.raises(Exception, match="signature"):
        StandardWebhook(created.secret).verify(later.body, dict(later.headers))


async def test_a_hanging_endpoint_does_not_starve_the_others(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    other = await Receiver().start()  # another host:port, as another customer's endpoint
    try:
        webhooks.create_webhook(
            conn, "slowpoke", receiver.script("/hang", *["hang"] * 100), ["order.created"]
        )
        webhooks.create_webhook(conn, "fine", other.url("/ok"), ["order.created"])
        emit_orders(database_url, "slowpoke", 40)
        async with running_worker(
            database_url,
            concurrency=8,
            owner_share=1.0,
            per_host_concurrency=2,
            batch_size=8,
            request_timeout=20.0,
        ) as worker:
            await eventually(
                lambda: len(receiver.on("/hang")) >= 2, what="the slow endpoint holding its slots"
            )
            for i in range(20):
                emit(conn, "fine", "order.created", {"i": i})
            await eventually(
                lambda: len(other.on("/ok")) == 20, timeout=10, what="the healthy endpoint served"
            )
            assert worker.sender is not None
            assert len(receiver.on("/hang")) <= 8  # it never took more than the process's slots
    finally:
        await other.stop()


async def test_a_pinned_vacuum_horizon_slows_nothing_to_a_stop(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # bench/vacuum_horizon.py measures the cost; here: deliveries keep flowing
    # while old snapshots keep every dead row version alive.
    webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"])
    with (
        psycopg.connect(database_url) as reader,
        psycopg.connect(database_url) as idle_writer,
    ):
        reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        reader.execute("select count(*) from outbox.deliveries")  # snapshot taken, held
        idle_writer.execute("create temp table pin (x int)")
        idle_writer.execute("insert into pin values (1)")  # an xid, then idle in transaction
        async with running_worker(database_url):
            for round_ in range(3):
                with psycopg.connect(database_url) as app:
                    for i in range(100):
                        emit(app, "v", "order.created", {"round": round_, "i": i})
                    app.commit()
                await until_settled(database_url, 100 * (round_ + 1))
        held = reader.execute("select count(*) from outbox.deliveries").fetchone()
        assert held == (0,)  # the snapshot really was pinned the whole time
    # Every event arrived (at least once: on a loaded machine an attempt past
    # the tests' 2 s timeout is retried after the receiver has it).
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 300


async def test_worker_commits_skip_the_wal_flush_wait_unless_asked(database_url: str) -> None:
    # Off by default (its bookkeeping is redone if a crash undoes it); "true"
    # leaves the server's setting, "on" here.
    for overrides, expected in (({}, "off"), ({"synchronous_commit": True}, "on")):
        pool = Worker(settings(database_url, **overrides))._pool()
        await pool.open()
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute("show synchronous_commit")).fetchone()
                assert row is not None and row[0] == expected
        finally:
            await pool.close()


FAN_OUT = {
    "busy_webhooks": [], "busy_owners": [], "per_owner": 10_000, "per_webhook": 10_000,
    "pace_horizon": 2.0, "lease_seconds": 300, "worker_id": "w", "traced": False,
}  # fmt: skip


async def test_worker_sessions_plan_each_statement_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """Prepared at the first run, generic from the first run: no custom
    plans (PostgreSQL makes five before it settles) and no unprepared runs."""
    webhooks.create_webhook(conn, "plan", "https://example.com/p", ["order.created"])
    pool = Worker(settings(database_url))._pool()
    await pool.open()
    try:
        async with pool.connection() as worker:
            for n in range(3):
                emit(conn, "plan", "order.created", {"n": n})
                await db.fetch_async(worker, "dispatch", {**FAN_OUT, "limit": 10, "lease_limit": 10})
            cur = await worker.execute(
                "select generic_plans, custom_plans from pg_prepared_statements "
                "where statement like '%claimed as materialized%'",
                prepare=False,  # or this query, which names that text, is listed too
            )
            assert await cur.fetchall() == [(3, 0)]
    finally:
        await pool.close()


async def test_worker_plans_made_while_the_tables_were_tiny_still_use_their_indexes(
    make_database: Any,
) -> None:
    # A prepared statement keeps the generic plan it settles on (forced here,
    # as the worker's statements reach it after five runs). Made while
    # deliveries, never analyzed yet, held 1,500 rows, that plan scanned the
    # whole table on every batch once it had grown (3-4x the time of
    # complete_deliveries in a third of the bench's drains). The worker's
    # sessions keep their index lookups; a plain session shows the trap. A
    # database of its own: the shared one's tables keep the statistics of
    # earlier tests' ANALYZE through TRUNCATE, and with them no trap.
    database_url = make_database("outbox_plans")
    migrate.upgrade(database_url)
    conn = psycopg.connect(database_url, autocommit=True)
    webhooks.create_webhook(conn, "tiny", "https://example.com/t", ["order.created"])

    def fan_out(count: int) -> None:
        conn.execute(
            "insert into outbox.events (owner_id, event_type, data)"
            " select 'tiny', 'order.created', jsonb_build_object('i', g) from generate_series(1, %s) g",
            (count,),
        )
        conn.execute(query("dispatch"), {**FAN_OUT, "limit": count, "lease_limit": count}).fetchall()

    # Past PostgreSQL's "assume 10 pages" for a never-analyzed table, short
    # of the size where an index wins anyway: ~20 pages.
    fan_out(1500)
    statements = {name: positional(query(name)) for name in ("complete_deliveries", "claim_deliveries",
                                                              "release_leases", "store_bodies")}  # fmt: skip
    args = {
        "outcomes": "'[]'", "bodies": "'{}'", "body_event_ids": "'{}'",
        "worker_id": "'w'", "ids": "'{}'",
        "limit": "200", "busy_webhooks": "'{}'", "busy_owners": "'{}'",
        "per_owner": "64", "per_webhook": "64", "lease_seconds": "300", "pace_horizon": "2",
        "traced": "false",
    }  # fmt: skip

    def execute(name: str) -> str:
        return f"execute {name}({', '.join(args[p] for p in statements[name][1])})"

    pool = Worker(settings(database_url))._pool()
    await pool.open()
    try:
        async with (
            pool.connection() as worker,
            await psycopg.AsyncConnection.connect(database_url, autocommit=True) as plain,
        ):
            for session in (worker, plain):
                await session.execute("set plan_cache_mode = force_generic_plan")
                for name, (text, _) in statements.items():
                    await session.execute(f"prepare {name} as {text}")
                    await session.execute(execute(name))  # the plan is made now
            fan_out(20_000)

            async def plan(session: psycopg.AsyncConnection[Any], name: str) -> str:
                cur = await session.execute(f"explain (costs off) {execute(name)}")
                return "\n".join(row[0] for row in await cur.fetchall())

            assert "Seq Scan on deliveries" in await plan(plain, "complete_deliveries")
            for name in statements:
                got = await plan(worker, name)
                assert "Seq Scan on deliveries" not in got and "Seq Scan on events" not in got, (name, got)
    finally:
        await pool.close()
        conn.close()


async def test_a_flood_for_one_webhook_drains_without_waiting_for_the_poll_interval(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # One webhook, far more due than it may run (32 at a time): its claims
    # skip it while it is saturated, and slots it frees during such a claim
    # must still lead to the next claim. A lost wake-up shows as a 10 s wait.
    # (The race needs a receiver in another process to show up often; here
    # the test guards the drain path as a whole.)
    webhooks.create_webhook(conn, "flood", receiver.url("/f"), ["order.created"])
    emit_orders(database_url, "flood", 3000)
    started = time.monotonic()
    async with running_worker(database_url, poll_interval=10.0):
        await until_settled(database_url, 3000, timeout=60)
    assert time.monotonic() - started < 9, "a claim waited for the poll interval"
    assert len(receiver.on("/f")) == 3000


@pytest.mark.parametrize("names", [["burst"], ["a", "b"]], ids=["one webhook", "two webhooks on one host"])
async def test_a_burst_for_one_host_queues_in_the_worker_not_in_the_connection_pool(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver, names: list[str]
) -> None:
    # 8 deliveries, 2 at a time, each answered after 0.6 s: the last ones wait
    # ~1.8 s to be sent, longer than the connect timeout (0.5 s). Waiting in
    # aiohttp's pool they failed as timeouts (20 attempts for 8 deliveries)
    # against a receiver they never reached; now all succeed at once. With
    # two webhooks (two customers) on the same host:port: aiohttp's limit is
    # per host, and with the cap counted per webhook 4 requests started, 2
    # of them only to wait in aiohttp's pool until they timed out.
    answer = Held(lambda: asyncio.sleep(0.6))
    each = 8 // len(names)
    for name in names:
        webhooks.create_webhook(conn, name, receiver.script(f"/{name}", *[answer] * each), ["order.created"])
        for i in range(each):
            emit(conn, name, "order.created", {"i": i})
    async with running_worker(
        database_url,
        concurrency=16,
        owner_share=1.0,
        per_host_concurrency=2,
        connect_timeout=0.5,
        request_timeout=1.5,
    ):
        await until_settled(database_url, 8)
    assert [len(receiver.on(f"/{name}")) for name in names] == [each] * len(names)
    assert answer.peak == 2
    assert conn.execute(
        "select count(*), count(*) filter (where status_code = 200) from outbox.delivery_attempts"
    ).fetchone() == (8, 8)


async def test_webhooks_sharing_a_host_take_turns_at_its_slots(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # Two customers' webhooks on one host, 2 slots for it. The slow one's 6
    # events come first: it runs 2 and queues 2 (a fan-out leases it at most
    # twice the cap), the quick one's delivery queues behind them. First in,
    # first out, it waited for both of the slow one's queued requests and
    # arrived 5th; taking turns, it goes when the first slot frees.
    slow, _ = receiver.slow(0.4)
    webhooks.create_webhook(conn, "bulk", receiver.script("/bulk", *[slow] * 6), ["order.created"])
    webhooks.create_webhook(conn, "other", receiver.url("/other"), ["order.status_changed"])
    for i in range(6):
        emit(conn, "bulk", "order.created", {"i": i})
    emit(conn, "other", "order.status_changed", {"i": 0})
    async with running_worker(database_url, concurrency=16, owner_share=1.0, per_host_concurrency=2):
        await until_settled(database_url, 7)
    arrivals = [r.path for r in receiver.requests]
    assert sorted(arrivals) == ["/bulk"] * 6 + ["/other"]
    assert arrivals.index("/other") <= 3, arrivals


async def test_a_slow_webhook_holds_a_bounded_share_of_send_slots(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # 100 events for a hanging receiver: it runs 2 requests and may hold 3 x 2
    # - 1 = 5 leases of the worker's 32 slots (9 if a claim and a fan-out
    # overlap); the rest stay in the table, unleased, for whoever has room.
    webhooks.create_webhook(conn, "stuck", receiver.script("/hang", *["hang"] * 100), ["order.created"])
    emit_orders(database_url, "stuck", 100)
    async with running_worker(
        database_url,
        concurrency=32,
        owner_share=1.0,
        per_host_concurrency=2,
        batch_size=50,
        request_timeout=20.0,
    ) as worker:
        await eventually(lambda: len(receiver.on("/hang")) >= 2, what="two hung requests")
        assert worker.sender is not None
        for _ in range(2):  # claims that could lease the webhook more
            await worker.sender.signals.claimed.next()
        assert worker.sender.in_flight == 2
        leased = conn.execute(
            "select count(*) from outbox.deliveries where leased_by is not null and status = 'pending'"
        ).fetchone()
        assert leased is not None and 2 <= leased[0] <= 9
        assert len(receiver.on("/hang")) == 2


async def test_a_saturated_worker_leases_one_refill_ahead_and_sends_it_as_slots_free(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """With every slot running, the sender holds one refill (a quarter of its
    8 slots: 2) leased ahead, ready for the first slots that free, instead of
    letting them stand empty for a claim's round trip. Never more than 8
    requests at once; nothing sent twice."""
    release = asyncio.Event()
    answer = Held(release.wait)
    webhooks.create_webhook(conn, "v", receiver.script("/a", *[answer] * 12), ["order.created"])
    emit_orders(database_url, "v", 12)
    async with running_worker(database_url, concurrency=8, owner_share=1.0) as worker:  # 32 per host
        sender = worker.sender
        assert sender is not None
        await eventually(lambda: answer.running == 8, what="eight requests running")
        await sender.signals.claimed.next()  # a claim with all its slots running leases nothing more
        assert (sender.in_flight, len(sender.ledger.waiting)) == (8, 2)  # waiting for any slot
        assert conn.execute(
            "select count(*) filter (where leased_by is not null), count(*) from outbox.deliveries"
        ).fetchone() == (10, 12)
        release.set()
        await until_settled(database_url, 12)
    assert answer.peak == 8
    assert Counter(r.headers["webhook-id"] for r in receiver.on("/a")).most_common(1)[0][1] == 1
    assert len(receiver.on("/a")) == 12


async def test_a_webhook_at_its_limit_is_claimed_for_before_its_queue_runs_dry(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """4 requests per host, so a webhook may hold 1 more queued (a quarter of
    4) and still be claimed for. The fan-out leases it 8 (twice its limit):
    4 run, 4 queue. Once 4 have ended, its last queued one running, it holds
    4 of its allowed 5: the next claim leases it 8 more while all 4 of its
    slots are still busy. It used to be skipped until one of its requests
    had ended with nothing queued, and that slot stood empty until the claim
    came back. Never more than 4 at once; every delivery once."""
    done = asyncio.Semaphore(0)
    answer = Held(done.acquire)
    webhooks.create_webhook(conn, "v", receiver.script("/a", *[answer] * 30), ["order.created"])
    emit_orders(database_url, "v", 30)

    def leased() -> int:
        row = conn.execute("select count(*) from outbox.deliveries where leased_by is not null").fetchone()
        assert row is not None
        return int(row[0])

    async with running_worker(
        database_url, concurrency=64, owner_share=1.0, per_host_concurrency=4
    ) as worker:
        await eventually(lambda: answer.running == 4, what="four requests running")
        assert worker.sender is not None
        await worker.sender.signals.claimed.next()  # no claim for a webhook holding 8
        assert leased() == 8
        for _ in range(4):
            done.release()
        await eventually(lambda: leased() == 12, what="a claim for the webhook holding 4")
        assert answer.running == 4
        for _ in range(26):
            done.release()
        await until_settled(database_url, 30)
    assert answer.peak == 4
    ids = [r.headers["webhook-id"] for r in receiver.on("/a")]
    assert len(ids) == len(set(ids)) == 30


async def test_a_job_leased_ahead_joins_its_hosts_queue_if_the_host_is_at_its_limit(
    database_url: str, receiver: Receiver
) -> None:
    """The sender on its own, jobs handed over by hand, real requests: 8
    slots, 5 per host, two hosts (127.0.0.1 and localhost, one server). 4
    jobs for b and 6 for a: 8 start, a's last 2 wait for any slot (one
    refill ahead). The first slot b frees goes to a's 5th; when b frees
    another, a is at its limit, so a's 6th joins a's queue instead of
    passing it, and goes when one of a's own requests ends."""
    config = settings(database_url, concurrency=8, owner_share=1.0, per_host_concurrency=5)
    b_done = asyncio.Semaphore(0)
    a_done = asyncio.Event()
    a, b = Held(a_done.wait), Held(b_done.acquire)
    a_url = receiver.script("/a", *[a] * 6)
    b_url = receiver.script("/b", *[b] * 4).replace("127.0.0.1", "localhost")
    assert "localhost" in b_url
    secret = secretbox.new_secret()
    hook_a, hook_b = uuid.uuid4(), uuid.uuid4()
    jobs = [Job(i, i, hook_b, 1, b_url, (secret,), b"{}") for i in range(1, 5)]
    jobs += [Job(i, i, hook_a, 1, a_url, (secret,), b"{}") for i in range(5, 11)]
    outcomes: list[Outcome] = []
    policy = open_policy(config)
    async with HttpClient(config, policy) as http:
        log = structlog.get_logger()
        sender = Sender(None, Attempter(http, config, policy), config, outcomes.append, log)  # type: ignore[arg-type]
        assert sender.reserve(20) == 10  # 8 slots and a refill of 2 ahead
        sender.hand_over(jobs, 10)
        assert sender.in_flight == 8 and sender.ledger.waiting == [9, 10]
        await eventually(lambda: a.running + b.running == 8, what="eight requests running")
        b_done.release()
        await eventually(lambda: a.running == 5, what="a's 5th request in b's slot")
        b_done.release()
        await eventually(lambda: len(outcomes) == 2, what="b's second answer")
        assert not sender.ledger.waiting and sender.ledger.queued == 1 and sender.in_flight == 7
        a_done.set()
        b_done.release()
        b_done.release()
        await eventually(lambda: len(outcomes) == 10, what="all answers")
    assert (a.peak, b.peak) == (5, 4)
    assert sorted(o.job.id for o in outcomes if o.status == "delivered") == list(range(1, 11))


async def test_a_queued_delivery_is_not_sent_once_its_lease_would_end_mid_request(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # One request at a time per webhook and worker, each answered after
    # 0.6 s; a lease lasts 1 s, a request may take 0.9 s. The worker that
    # fans out leases two deliveries: it sends one and queues the other, whose
    # turn comes at 0.6 s, too late to be sure to finish before its lease ends
    # at 1 s. Sent anyway, it ran until 1.2 s, and the other worker (polling
    # every 50 ms) claimed it again at 1 s: the receiver got it twice.
    async def answer(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.Response(text="ok")

    url = receiver.script("/lease", *[answer] * 10)
    webhooks.create_webhook(conn, "leases", url, ["order.created"])
    limits = {"per_host_concurrency": 1, "request_timeout": 0.9, "lease_seconds": 1.0}
    async with (
        running_worker(database_url, worker_id="a", **limits),
        running_worker(database_url, worker_id="b", **limits),
    ):
        emit_orders(database_url, "leases", 3)
        await until_settled(database_url, 3)
        await asyncio.sleep(0.3)  # a duplicate would still be arriving
    receipts = Counter(r.headers["webhook-id"] for r in receiver.on("/lease"))
    assert len(receipts) == 3
    assert set(receipts.values()) == {1}, receipts
    assert conn.execute(
        "select count(*), count(*) filter (where status_code = 200) from outbox.delivery_attempts"
    ).fetchone() == (3, 3)


async def test_timeouts_end_hanging_requests_one_after_another_on_one_lane(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """The timeout sweep cancels a hanging request at its deadline (at most a
    tick late) and takes the cancellation back: the lane that sent it goes on
    to the next hanging one, then to a healthy one, each attempt logged as a
    timeout, and the worker stays up."""
    webhooks.create_webhook(conn, "v", receiver.script("/h", "hang", "hang"), ["order.created"])
    async with running_worker(
        database_url, concurrency=1, owner_share=1.0, per_host_concurrency=1, request_timeout=0.5,
        lease_seconds=5.0,
        retry_schedule=[30, 30, 30],
    ) as worker:  # fmt: skip
        for n in range(3):
            emit(conn, "v", "order.created", {"n": n})
        await eventually(
            lambda: conn.execute("select count(*) from outbox.delivery_attempts").fetchone() == (3,),
            timeout=10,
            what="three attempts",
        )
        sender = worker.sender
        assert sender is not None
        await eventually(lambda: sender.in_flight == 0, what="the lane idle")
        lanes = {task for task in asyncio.all_tasks() if task.get_name() == "sender-lane"}
        assert len(lanes) == 1 and not any(lane.done() for lane in lanes)  # one lane sent all three
    rows = conn.execute(
        "select error_class, status_code, duration_ms from outbox.delivery_attempts order by attempted_at"
    ).fetchall()
    assert [(e, c) for e, c, _ in rows] == [("timeout", None), ("timeout", None), (None, 200)]
    tick = timeout_tick(settings(database_url, request_timeout=0.5, lease_seconds=5.0))
    for _, _, duration in rows[:2]:
        assert 500 <= duration < 500 + tick * 1000 + 300  # the rest: a loaded CI machine


def test_the_timeout_tick_ends_a_request_before_its_lease() -> None:
    def tick(timeout: float, lease: float) -> float:
        return timeout_tick(settings("postgresql://", request_timeout=timeout, lease_seconds=lease))

    assert tick(15, 60) == 0.25  # the defaults
    assert tick(0.5, 60) == 0.125  # a quarter of a short timeout
    assert tick(0.9, 1.0) == pytest.approx(0.02)  # a fifth of the lease's margin
    assert tick(15, 15.001) == 0.01  # the floor, not a spinning sweep


async def test_a_request_cancelled_outside_shutdown_is_sent_again_and_its_lane_goes_on(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """Only shutdown cancels a request. A cancellation from anywhere else (a
    timeout's, landing as its request ended) must neither end the lane that
    was sending it nor lose the delivery: its lease expires and it is sent
    again."""
    webhooks.create_webhook(conn, "v", receiver.script("/h", "hang"), ["order.created"])
    async with running_worker(
        database_url,
        concurrency=1,
        owner_share=1.0,
        per_host_concurrency=1,
        request_timeout=5.0,
        lease_seconds=6.0,
    ) as worker:
        first = emit(conn, "v", "order.created", {"n": 1})
        await eventually(lambda: len(receiver.on("/h")) == 1, what="the first request hanging")
        sender = worker.sender
        assert sender is not None
        ((lane, _),) = sender.ledger.running()
        lane.cancel()
        second = emit(conn, "v", "order.created", {"n": 2})
        await until_settled(database_url, 2, timeout=20)
        assert not lane.done()  # it went on: sent the second, then the first again
        assert sender.in_flight == 0
    sent = [json.loads(r.body)["data"]["n"] for r in receiver.on("/h")]
    assert sent == [1, 2, 1]
    states = conn.execute(
        "select event_id, status::text, attempts from outbox.deliveries order by event_id"
    ).fetchall()
    assert states == [(first, "delivered", 1), (second, "delivered", 1)]
