"""Integrity of the hot tables without foreign keys (set-based cascades and batched locks).

Deleting a parent deletes its children, whoever deletes it and however;
and a parent deleted while the worker's statements write children can
never leave an orphan, whichever commits first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from outbox_worker import emit, webhooks
from outbox_worker.errors import FixedId, from_sqlstate
from outbox_worker.sql import query
from tests.helpers import complete_delivered, orphans, wait_for

# A column of each parent that the worker's own statements update.
UNRELATED = {
    "webhooks": "updated_at = now()",
    "events": "dispatched_at = now()",
    "deliveries": "next_attempt_at = now()",
}

DISPATCH = {"limit": 100, "lease_limit": 100, "busy_webhooks": [], "busy_owners": [],
                "per_owner": 10_000, "per_webhook": 100,
            "lease_seconds": 30, "worker_id": "w", "traced": False}  # fmt: skip


def counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
    row = conn.execute(
        "select (select count(*) from outbox.events), (select count(*) from outbox.webhooks), "
        "(select count(*) from outbox.deliveries), (select count(*) from outbox.delivery_attempts)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def two_webhooks_with_history(conn: psycopg.Connection[Any]) -> tuple[Any, Any, list[int]]:
    """Webhooks a and b, three events delivered to both, each with an attempt."""
    a = webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"]).id
    b = webhooks.create_webhook(conn, "v", "https://example.com/b", ["order.created"]).id
    events = [emit(conn, "v", "order.created", {"n": n}) for n in range(3)]
    conn.execute(query("dispatch"), DISPATCH)
    ids = [r[0] for r in conn.execute("select id from outbox.deliveries order by id")]
    assert complete_delivered(conn, ids) == 6
    assert counts(conn) == (3, 2, 6, 6)
    return a, b, events


def test_the_hot_tables_carry_no_foreign_keys(conn: psycopg.Connection[Any]) -> None:
    keys = conn.execute(
        "select conname from pg_constraint where contype = 'f' and connamespace = 'outbox'::regnamespace"
    ).fetchall()
    assert keys == []


def test_deleting_a_webhook_by_hand_deletes_its_history(conn: psycopg.Connection[Any]) -> None:
    a, b, _ = two_webhooks_with_history(conn)
    conn.execute("delete from outbox.webhooks where id = %s", (a,))
    assert counts(conn) == (3, 1, 3, 3)
    assert {r[0] for r in conn.execute("select distinct webhook_id from outbox.deliveries")} == {b}
    assert orphans(conn) == (0, 0, 0)
    webhooks.delete_webhook(conn, "v", b)  # the SQL API's way
    assert counts(conn) == (3, 0, 0, 0)


def test_deleting_events_or_deliveries_deletes_their_children(conn: psycopg.Connection[Any]) -> None:
    _, _, events = two_webhooks_with_history(conn)
    conn.execute("delete from outbox.events where id = %s", (events[0],))
    assert counts(conn) == (2, 2, 4, 4)
    conn.execute("delete from outbox.deliveries where event_id = %s", (events[1],))
    assert counts(conn) == (2, 2, 2, 2)
    assert orphans(conn) == (0, 0, 0)


@pytest.mark.parametrize("parent", ["events", "webhooks", "deliveries"])
def test_truncating_a_parent_empties_its_children(conn: psycopg.Connection[Any], parent: str) -> None:
    two_webhooks_with_history(conn)
    conn.execute(f"truncate outbox.{parent}")
    assert orphans(conn) == (0, 0, 0)
    events, hooks, deliveries, attempts = counts(conn)
    assert (deliveries, attempts) == (0, 0)
    assert (events, hooks) == {"events": (0, 2), "webhooks": (3, 0), "deliveries": (3, 2)}[parent]


def test_the_cascade_runs_as_its_owner(conn: psycopg.Connection[Any], database_url: str) -> None:
    """Like a foreign key's cascade: a role that may delete webhooks needs no
    privilege on their history."""
    a, _, _ = two_webhooks_with_history(conn)
    role = "outbox_test_webhook_janitor"
    conn.execute(f"drop role if exists {role}")
    conn.execute(f"create role {role}")
    try:
        conn.execute(f"grant usage on schema outbox to {role}")
        conn.execute(f"grant select, delete on outbox.webhooks to {role}")
        with psycopg.connect(database_url, autocommit=True) as janitor:
            janitor.execute(f"set role {role}")
            janitor.execute("delete from outbox.webhooks where id = %s", (a,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                janitor.execute("delete from outbox.deliveries")
        assert counts(conn) == (3, 1, 3, 3)
    finally:
        conn.execute(f"drop owned by {role}")
        conn.execute(f"drop role {role}")


def _waits_for_a_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "select count(*) from pg_stat_activity "
        "where datname = current_database() and wait_event_type = 'Lock'"
    ).fetchone()
    return bool(row and row[0])


def in_thread(
    conn: psycopg.Connection[Any], database_url: str, work: Callable[[Any], Any]
) -> Callable[[], Any]:
    """Run ``work`` on a connection of its own in a thread until it waits for
    a lock; the returned function joins it and gives its result."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as other:
                result["value"] = work(other)
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: _waits_for_a_lock(conn) or not thread.is_alive(), what="a statement waiting for a lock")
    assert thread.is_alive(), result

    def join() -> Any:
        thread.join(30)
        assert not thread.is_alive()
        if "error" in result:
            raise result["error"]
        return result["value"]

    return join


def test_a_webhook_deleted_while_dispatch_runs_takes_the_new_deliveries(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    hook = webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"]).id
    emit(conn, "v", "order.created", {"n": 1})
    with psycopg.connect(database_url) as dispatcher:
        assert len(dispatcher.execute(query("dispatch"), DISPATCH).fetchall()) == 1  # uncommitted
        join = in_thread(conn, database_url, lambda other: webhooks.delete_webhook(other, "v", hook))
        dispatcher.commit()
    join()
    assert counts(conn) == (1, 0, 0, 0)
    assert orphans(conn) == (0, 0, 0)


def test_dispatch_beside_a_webhook_delete_skips_the_webhook(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    hook = webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"]).id
    event = emit(conn, "v", "order.created", {"n": 1})
    with psycopg.connect(database_url) as deleter:
        webhooks.delete_webhook(deleter, "v", hook)  # uncommitted
        join = in_thread(
            conn, database_url, lambda other: other.execute(query("dispatch"), DISPATCH).fetchall()
        )
        deleter.commit()
    rows = join()
    # The event is fanned out to nobody: its one webhook is gone.
    assert [(r[0], r[6]) for r in rows] == [(event, None)]
    assert counts(conn) == (1, 0, 0, 0)
    assert conn.execute("select dispatched_at is not null from outbox.events").fetchone() == (True,)


@pytest.mark.parametrize("moved", [True, False], ids=["own-lease", "already-delivered"])
@pytest.mark.parametrize("first", ["completer", "deleter"])
def test_an_attempt_logged_beside_a_webhook_delete_leaves_no_orphan(
    conn: psycopg.Connection[Any], database_url: str, moved: bool, first: str
) -> None:
    """An outcome that moves its delivery (this worker's lease) or only logs
    an attempt (a duplicate of one already delivered), while the delivery's
    webhook is deleted: whichever commits first, no attempt outlives it."""
    hook = webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"]).id
    emit(conn, "v", "order.created", {"n": 1})
    conn.execute(query("dispatch"), DISPATCH)
    [(delivery,)] = conn.execute("select id from outbox.deliveries").fetchall()
    if not moved:
        conn.execute("update outbox.deliveries set status = 'delivered', leased_by = null")
    if first == "completer":
        with psycopg.connect(database_url) as completer:
            assert complete_delivered(completer, [delivery]) == (1 if moved else 0)
            assert completer.execute("select count(*) from outbox.delivery_attempts").fetchone() == (1,)
            join = in_thread(conn, database_url, lambda other: webhooks.delete_webhook(other, "v", hook))
            completer.commit()
        join()
    else:
        with psycopg.connect(database_url) as deleter:
            webhooks.delete_webhook(deleter, "v", hook)
            join = in_thread(conn, database_url, lambda other: complete_delivered(other, [delivery]))
            deleter.commit()
        assert join() == 0
    assert counts(conn) == (1, 0, 0, 0)
    assert orphans(conn) == (0, 0, 0)


@pytest.mark.parametrize(
    ("table", "change"),
    [
        ("webhooks", "id = gen_random_uuid()"),
        ("events", "id = default"),  # the one change a GENERATED ALWAYS identity allows
        ("deliveries", "id = default"),
    ],
)
def test_an_update_naming_a_parents_id_is_refused(
    conn: psycopg.Connection[Any], table: str, change: str
) -> None:
    two_webhooks_with_history(conn)
    before = conn.execute(f"select array_agg(id order by id) from outbox.{table}").fetchone()
    with pytest.raises(psycopg.Error) as refused:
        conn.execute(f"update outbox.{table} set {change}")
    assert refused.value.sqlstate == "OW011"
    assert f"outbox.{table}.id cannot be changed" in str(refused.value)
    assert isinstance(from_sqlstate(refused.value.sqlstate, str(refused.value)), FixedId)
    assert conn.execute(f"select array_agg(id order by id) from outbox.{table}").fetchone() == before
    assert orphans(conn) == (0, 0, 0)
    # Updates that do not name the id go through, as the worker's do.
    assert conn.execute(f"update outbox.{table} set {UNRELATED[table]}").rowcount > 0


def test_dispatch_does_not_wait_for_an_open_webhook_update(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """update_webhook() in a transaction left open holds its webhook row
    FOR NO KEY UPDATE, which dispatch's FOR KEY SHARE does not wait for (a
    FOR UPDATE made every dispatch wait until that transaction ended)."""
    hook = webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"]).id
    event = emit(conn, "v", "order.created", {"n": 1})
    with psycopg.connect(database_url) as updater:
        webhooks.update_webhook(updater, "v", hook, url="https://example.com/b")  # uncommitted
        with psycopg.connect(database_url, autocommit=True) as dispatcher:
            dispatcher.execute("set lock_timeout = '2s'")
            rows = dispatcher.execute(query("dispatch"), DISPATCH).fetchall()
        # Fanned out with the committed URL: the update is not visible yet.
        assert [(r[0], r[6], r[9]) for r in rows] == [(event, hook, "https://example.com/a")]
        updater.commit()
    assert conn.execute("select url from outbox.webhooks").fetchone() == ("https://example.com/b",)
    assert counts(conn) == (1, 1, 1, 0)
