"""Dispatcher: one statement before the first POST, the bytes stored after."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.sql
import pytest
from psycopg_pool import AsyncConnectionPool

from outbox_worker import emit, webhooks
from outbox_worker.attempt import storable_text
from outbox_worker.completer import Completer
from outbox_worker.dispatch import Dispatcher
from outbox_worker.jobs import Job, Outcome
from outbox_worker.logs import get_logger
from outbox_worker.sql import query
from tests.helpers import complete_delivered, delivered_outcomes, positional
from tests.workers import settings


def stored_body(conn: psycopg.Connection[Any], event_id: int) -> bytes | None:
    row = conn.execute("select body from outbox.events where id = %s", (event_id,)).fetchone()
    assert row is not None
    return None if row[0] is None else bytes(row[0])


def an_event_for_two_webhooks(conn: psycopg.Connection[Any]) -> int:
    for path in ("a", "b"):
        webhooks.create_webhook(conn, "v", f"https://example.com/{path}", ["order.created"])
    return emit(conn, "v", "order.created", {"id": "ord_1"})


class Slots:
    """The sender's side of the handoff, reduced to a fixed number of slots
    and a record of what it is handed."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.handed: list[Job] = []

    def reserve(self, wanted: int) -> int:
        return min(wanted, self.slots)

    def hand_over(self, jobs: list[Job], reserved: int) -> None:
        self.handed.extend(jobs)

    def busy_webhooks(self) -> list[uuid.UUID]:
        return []

    def busy_owners(self) -> list[str]:
        return []

    def note_backlog(self) -> None:
        pass


async def dispatch_once(database_url: str, slots: int) -> tuple[list[Job], AsyncConnectionPool[Any]]:
    sender = Slots(slots)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    dispatcher = Dispatcher(
        pool,
        settings(database_url),
        None,
        sender,
        log=get_logger(),
    )
    assert await dispatcher.dispatch_batch() == 1
    return sender.handed, pool


async def test_bytes_of_a_fully_leased_event_ride_with_its_first_outcome(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    event_id = an_event_for_two_webhooks(conn)
    handed, pool = await dispatch_once(database_url, slots=10)
    try:
        # Both deliveries leased to us: nothing else was written before the sends.
        assert len(handed) == 2
        assert stored_body(conn, event_id) is None
        assert [job.store_body for job in handed] == [True, False]  # one job carries the bytes
        completer = Completer(pool, settings(database_url), get_logger())
        for job in handed:
            completer.record(
                Outcome(job, "delivered", 0.0, datetime.now(UTC), 1.0, status_code=200, response_body="")
            )
        await completer.flush()
    finally:
        await pool.close()
    assert stored_body(conn, event_id) == handed[0].body == handed[1].body
    assert conn.execute("select count(*) from outbox.deliveries where status = 'delivered'").fetchone() == (
        2,
    )


async def test_a_shutdown_flush_beside_the_completers_own_writes_each_outcome_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # At shutdown the worker flushes while the completer's loop may be in the
    # middle of its own write: both took the same batch off the front of the
    # queue, logged its attempts twice and then each dropped a batch, the
    # second one never written.
    an_event_for_two_webhooks(conn)
    handed, pool = await dispatch_once(database_url, slots=10)
    try:
        completer = Completer(pool, settings(database_url, batch_size=1), get_logger())
        for job in handed:
            completer.record(
                Outcome(job, "delivered", 0.0, datetime.now(UTC), 1.0, status_code=200, response_body="")
            )
        await asyncio.gather(completer.flush(), completer.flush_once())
    finally:
        await pool.close()
    assert completer.backlog == 0 and completer.written == 2
    assert conn.execute(
        "select count(*), count(distinct delivery_id) from outbox.delivery_attempts"
    ).fetchone() == (2, 2)
    assert conn.execute("select count(*) from outbox.deliveries where status = 'delivered'").fetchone() == (
        2,
    )


async def test_bytes_of_an_event_left_for_other_workers_are_stored_at_once(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    event_id = an_event_for_two_webhooks(conn)
    handed, pool = await dispatch_once(database_url, slots=1)
    await pool.close()
    # One delivery is ours, the other any worker may claim now: it must find
    # the bytes we send, so they are stored before the dispatcher returns.
    assert len(handed) == 1
    assert not handed[0].store_body
    assert stored_body(conn, event_id) == handed[0].body


def test_a_claim_locks_no_more_rows_than_it_keeps(database_url: str, conn: psycopg.Connection[Any]) -> None:
    """One webhook, a cap of 2 per webhook, room for 10: the claim keeps 2,
    and must not hold the other 8 locked (hidden from other workers) while
    its statement runs."""
    webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"])
    for n in range(10):
        emit(conn, "v", "order.created", {"n": n})
    params = {
        "limit": 200,
        "lease_limit": 0,
        "busy_webhooks": [],
        "busy_owners": [],
        "per_owner": 10_000,
        "per_webhook": 64,
        "traced": False,
    }
    conn.execute(query("dispatch"), {**params, "lease_seconds": 30, "worker_id": "d"})  # all unleased
    with psycopg.connect(database_url) as claimer:  # a transaction: its locks stay until rollback
        claimed = claimer.execute(
            query("claim_deliveries"),
            {
                "limit": 10,
                "busy_webhooks": [],
                "busy_owners": [],
                "per_owner": 10_000,
                "per_webhook": 2,
                "pace_horizon": 2.0,
                "lease_seconds": 30,
                "worker_id": "w",
                "traced": False,
            },
        ).fetchall()
        assert len(claimed) == 2
        free = conn.execute(
            "select count(*) from (select id from outbox.deliveries for update skip locked) s"
        ).fetchone()
        claimer.rollback()
    assert free == (8,)


def _deliveries_rows_read(node: dict[str, Any]) -> int:
    """Rows the plan read from outbox.deliveries: kept plus filtered out."""
    own = 0
    if node.get("Relation Name") == "deliveries" and node.get("Node Type") != "ModifyTable":
        own = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    return own + sum(_deliveries_rows_read(child) for child in node.get("Plans", []))


def _generic_plan(conn: psycopg.Connection[Any], name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run query ``name`` under the generic plan a long-lived worker reuses; its executed plan."""
    statement, order = positional(query(name))
    conn.execute(f"prepare check_{name} as " + statement)
    conn.execute("set plan_cache_mode = force_generic_plan")
    literals = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(args[n]) for n in order)
    explain = psycopg.sql.SQL("explain (analyze, format json) execute {}({})")
    row = conn.execute(explain.format(psycopg.sql.Identifier(f"check_{name}"), literals)).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


@pytest.mark.parametrize("statement", ["complete_deliveries", "release_leases"])
def test_a_batch_by_id_reads_its_rows_not_the_backlog(conn: psycopg.Connection[Any], statement: str) -> None:
    """Two deliveries completed (or handed back) must be looked up by id
    whatever the statistics say. With the pending share analyzed while it
    was small, the plan scanned the whole pending set (the due index) and
    filtered it by id: every batch cost O(backlog)."""
    webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"])
    dispatch = {"limit": 5000, "lease_limit": 0, "busy_webhooks": [], "busy_owners": [],
                "per_owner": 10_000, "per_webhook": 64,
                "lease_seconds": 30, "worker_id": "d", "traced": False}  # fmt: skip

    def backlog(events: int) -> None:
        conn.execute(
            "insert into outbox.events (owner_id, event_type, data) "
            "select 'v', 'order.created', jsonb_build_object('n', g) from generate_series(1, %s) g",
            (events,),
        )
        conn.execute(query("dispatch"), dispatch)  # unleased, pending

    # The usual state of a table with retention: nearly every row delivered
    # when it was last analyzed. Then a burst queues a backlog.
    backlog(500)
    conn.execute("update outbox.deliveries set status = 'delivered', completed_at = now()")
    conn.execute("analyze outbox.deliveries")
    backlog(3000)
    ids = [r[0] for r in conn.execute("select id from outbox.deliveries order by id desc limit 2")]
    conn.execute("update outbox.deliveries set leased_by = 'w' where id = any(%s)", (ids,))
    if statement == "complete_deliveries":
        args: dict[str, Any] = {
            "outcomes": delivered_outcomes(ids), "body_event_ids": [], "bodies": [], "worker_id": "w",
        }  # fmt: skip
        effect = "select count(*) from outbox.deliveries where id = any(%s) and status = 'delivered'"
    else:
        args = {"ids": ids, "worker_id": "w"}
        effect = "select count(*) from outbox.deliveries where id = any(%s) and leased_by is null"
    plan = _generic_plan(conn, statement, args)
    assert conn.execute(effect, (ids,)).fetchone() == (2,)
    assert _deliveries_rows_read(plan) <= 4 * len(ids), json.dumps(plan, indent=1)


def _events_rows_read(node: dict[str, Any]) -> int:
    """Rows the plan read from outbox.events, over every loop."""
    own = 0
    if node.get("Relation Name") == "events" and node.get("Node Type") != "ModifyTable":
        per_loop = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        own = per_loop * node.get("Actual Loops", 1)
    return own + sum(_events_rows_read(child) for child in node.get("Plans", []))


def test_a_claim_reads_each_leased_event_once(conn: psycopg.Connection[Any]) -> None:
    """A claim of 200 rows looks up each one's event by primary key. Joined
    on the id and on "= any(every leased event id)", it was planned as a
    nested loop that probed the whole array for every leased row: 200 x 200
    lookups, 151 ms of a 209 ms claim during a drain."""
    webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"])
    conn.execute(
        "insert into outbox.events (owner_id, event_type, data) "
        "select 'v', 'order.created', jsonb_build_object('n', g) from generate_series(1, 300) g"
    )
    conn.execute(query("dispatch"), {"limit": 300, "lease_limit": 0, "busy_webhooks": [], "busy_owners": [],
                                     "per_owner": 10_000, "per_webhook": 300,
                                     "lease_seconds": 30, "worker_id": "d", "traced": False})  # fmt: skip
    plan = _generic_plan(conn, "claim_deliveries", {
        "limit": 200, "busy_webhooks": [], "busy_owners": [], "per_owner": 10_000, "per_webhook": 200,
        "pace_horizon": 2.0, "lease_seconds": 30, "worker_id": "w", "traced": False,
    })  # fmt: skip
    assert conn.execute("select count(*) from outbox.deliveries where leased_by = 'w'").fetchone() == (200,)
    assert _events_rows_read(plan) <= 200, json.dumps(plan, indent=1)


def test_a_webhook_row_locked_elsewhere_does_not_hold_up_the_completion(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    """An outcome whose webhook's health must change while another
    transaction writes that webhook (an owner's update, a DBA's open
    UPDATE): the outcome is written at once and the health by a later
    batch. Waiting held every outcome of the batch behind that transaction."""
    hook = webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"]).id
    for n in range(2):
        emit(conn, "v", "order.created", {"n": n})
    conn.execute(query("dispatch"), {"limit": 10, "lease_limit": 10, "busy_webhooks": [], "busy_owners": [],
                "per_owner": 10_000, "per_webhook": 10,
                                     "lease_seconds": 30, "worker_id": "w", "traced": False})  # fmt: skip
    first, second = [r[0] for r in conn.execute("select id from outbox.deliveries order by id")]

    def last_success() -> Any:
        row = conn.execute("select last_success_at from outbox.webhooks where id = %s", (hook,)).fetchone()
        assert row is not None
        return row[0]

    conn.execute("set statement_timeout = '5s'")  # a wait fails the test instead of hanging it
    with psycopg.connect(database_url) as owner:
        owner.execute("update outbox.webhooks set updated_at = now() where id = %s", (hook,))  # uncommitted
        assert complete_delivered(conn, [first]) == 1
        assert last_success() is None  # skipped, not waited for
        owner.commit()
    assert complete_delivered(conn, [second]) == 1
    assert last_success() is not None
    assert conn.execute("select count(*) from outbox.delivery_attempts").fetchone() == (2,)


async def test_an_outcome_text_with_a_lone_surrogate_is_still_written(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    # orjson refuses a lone surrogate and PostgreSQL's JSON refuses it
    # escaped: one such error text would have failed its whole batch again
    # and again, holding up every outcome behind it.
    an_event_for_two_webhooks(conn)
    handed, pool = await dispatch_once(database_url, slots=10)
    try:
        completer = Completer(pool, settings(database_url), get_logger())
        failing, raw = handed
        completer.record(
            Outcome(failing, "pending", 60.0, datetime.now(UTC), 1.0, error_class="connection",
                    error=storable_text("OSError: bad name \udcff\x00"))
        )  # fmt: skip
        unchecked = Outcome(raw, "pending", 60.0, datetime.now(UTC), 1.0, error_class="connection")
        unchecked.error = "raw \ud800"  # past storable_text
        completer.record(unchecked)
        await completer.flush()
    finally:
        await pool.close()
    errors = conn.execute("select error from outbox.delivery_attempts order by delivery_id").fetchall()
    assert errors == [("OSError: bad name ?\ufffd",), ("raw ?",)]
