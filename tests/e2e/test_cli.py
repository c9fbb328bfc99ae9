"""The console script against a real database, as an operator runs it."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from outbox_worker import migrate
from tests.cli import create_hook, run
from tests.helpers import orphans


def test_migrate_on_an_empty_database(make_database: Any) -> None:
    url = make_database("outbox_cli")
    first = run(url, "migrate")
    assert first.returncode == 0, first.stderr
    assert f"revision {migrate.head_revision()}" in first.stdout
    assert run(url, "migrate").returncode == 0  # idempotent
    down = run(url, "migrate", "--downgrade")
    assert down.returncode == 0 and "base" in down.stdout


def test_webhook_lifecycle(database_url: str, conn: psycopg.Connection[Any]) -> None:
    created = run(
        database_url,
        "--json",
        "webhooks",
        "create",
        "--owner",
        "vendor-1",
        "--url",
        "https://example.com/hook",
        "--event",
        "order.created",
        "--event",
        "order.status_changed",
    )
    assert created.returncode == 0, created.stderr
    [hook] = json.loads(created.stdout)
    assert hook["secret"].startswith("whsec_") and hook["events"] == ["order.created", "order.status_changed"]

    listed = run(database_url, "--json", "webhooks", "list", "--owner", "vendor-1")
    assert [w["id"] for w in json.loads(listed.stdout)] == [hook["id"]]
    assert hook["secret"] not in listed.stdout

    updated = run(
        database_url, "--json", "webhooks", "update", hook["id"], "--owner", "vendor-1", "--disable"
    )
    assert json.loads(updated.stdout)[0]["enabled"] is False

    rotated = run(database_url, "--json", "webhooks", "rotate-secret", hook["id"], "--owner", "vendor-1")
    new_secret = json.loads(rotated.stdout)[0]["secret"]
    assert new_secret != hook["secret"]
    assert conn.execute("select secret from outbox.webhooks").fetchone() == (new_secret,)

    assert run(database_url, "webhooks", "delete", hook["id"], "--owner", "vendor-1").returncode == 0
    assert conn.execute("select count(*) from outbox.webhooks").fetchone() == (0,)


def test_emit_and_event_types(database_url: str, conn: psycopg.Connection[Any]) -> None:
    result = run(
        database_url, "--json", "emit", "--owner", "v", "--type", "order.created", "--data", '{"id": "x"}'
    )
    assert result.returncode == 0, result.stderr
    event_id = json.loads(result.stdout)[0]["event_id"]
    assert conn.execute("select data from outbox.events where id = %s", (event_id,)).fetchone() == (
        {"id": "x"},
    )
    assert run(database_url, "event-types", "add", "invoice.paid").returncode == 0
    listed = run(database_url, "--json", "event-types", "list")
    assert "invoice.paid" in {t["name"] for t in json.loads(listed.stdout)}


def test_errors_are_one_clear_line_and_exit_non_zero(database_url: str) -> None:
    for i in range(5):
        run(database_url, "webhooks", "create", "--owner", "v", "--url", f"https://e.com/{i}", "--event", "*")
    sixth = run(database_url, "webhooks", "create", "--owner", "v", "--url", "https://e.com/", "--event", "*")
    assert sixth.returncode == 1
    assert "webhook limit reached" in sixth.stderr and "Traceback" not in sixth.stderr
    bad_json = run(database_url, "emit", "--owner", "v", "--type", "order.created", "--data", "{oops")
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    not_object = run(database_url, "emit", "--owner", "v", "--type", "order.created", "--data", "[1]")
    assert not_object.returncode == 1 and "must be a JSON object" in not_object.stderr
    missing = run(database_url, "webhooks", "delete", "00000000-0000-0000-0000-000000000000", "--owner", "v")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_unreachable_database_is_a_clear_error() -> None:
    result = run("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", "webhooks", "list", "--owner", "v")
    assert result.returncode == 1
    assert "cannot connect to the database" in result.stderr and "Traceback" not in result.stderr


def _finished_delivery(conn: psycopg.Connection[Any], status: str, age: str) -> int:
    hook = conn.execute("select id from outbox.webhooks limit 1").fetchone()
    assert hook is not None
    event = conn.execute(
        "insert into outbox.events (owner_id, event_type, data, created_at, dispatched_at, body) "
        "values ('v', 'order.created', '{}', now() - %s::interval, now(), '{}') returning id",
        (age,),
    ).fetchone()
    assert event is not None
    row = conn.execute(
        "insert into outbox.deliveries (event_id, webhook_id, status, attempts, completed_at) "
        "values (%s, %s, %s, 4, now()) returning id",
        (event[0], hook[0], status),
    ).fetchone()
    assert row is not None
    conn.execute(
        "insert into outbox.delivery_attempts (delivery_id, attempt, attempted_at, duration_ms, status_code) "
        "values (%s, 4, now(), 1, 500)",
        (row[0],),
    )
    return int(row[0])


def test_stats_redeliver_and_purge(database_url: str, conn: psycopg.Connection[Any]) -> None:
    created = create_hook(database_url)
    hook_id = json.loads(created.stdout)[0]["id"]
    old_failed = _finished_delivery(conn, "failed", "40 days")
    old_pending_event = _finished_delivery(conn, "failed", "40 days")
    conn.execute("update outbox.deliveries set status = 'pending' where id = %s", (old_pending_event,))
    _finished_delivery(conn, "delivered", "40 days")
    recent = _finished_delivery(conn, "delivered", "1 day")

    stats = json.loads(run(database_url, "--json", "stats").stdout)[0]
    [row] = stats["webhooks"]
    assert (row["pending"], row["failed"]) == (1, 1) and stats["undispatched_events"] == 0
    assert "Queue health" in run(database_url, "stats").stdout

    # The owner is required; an operator acting across owners says so.
    unowned = run(database_url, "redeliver", str(old_failed))
    assert unowned.returncode == 2 and "give --owner OWNER, or --any-owner" in unowned.stderr
    assert run(database_url, "redeliver", str(old_failed), "--owner", "someone-else").returncode == 1
    assert run(database_url, "redeliver", str(old_failed), "--owner", "v").returncode == 0
    assert conn.execute(
        "select status::text, attempts from outbox.deliveries where id = %s", (old_failed,)
    ).fetchone() == ("pending", 0)
    conn.execute(
        "update outbox.deliveries set status = 'failed', completed_at = now() where id = %s", (old_failed,)
    )
    replay = run(database_url, "redeliver", "--webhook", hook_id, "--owner", "v", "--since", "2000-01-01")
    assert replay.returncode == 0 and "re-queued 1 failed" in replay.stdout
    conn.execute("update outbox.deliveries set status = 'failed' where id = %s", (old_failed,))
    assert run(database_url, "redeliver", str(old_failed), "--any-owner").returncode == 0
    conn.execute("update outbox.deliveries set status = 'failed' where id = %s", (old_failed,))
    missing = run(database_url, "redeliver", "999999", "--owner", "v")
    assert missing.returncode == 1 and "delivery 999999 not found" in missing.stderr

    purged = run(database_url, "purge", "--older-than", "30d", "--batch-size", "1")
    assert purged.returncode == 0, purged.stderr
    assert "purged 2 events" in purged.stdout
    # Only the pending one (still owed to its webhook) and the recent one remain.
    remaining = {r[0] for r in conn.execute("select id from outbox.deliveries")}
    assert remaining == {old_pending_event, recent}
    assert conn.execute("select count(*) from outbox.delivery_attempts").fetchone() == (2,)
    assert orphans(conn) == (0, 0, 0)
    bad = run(database_url, "purge", "--older-than", "soon")
    assert bad.returncode == 2 and "use a number and one of" in bad.stderr
