"""The console script against a real database, as an operator runs it."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from outbox_worker import migrate
from tests.cli import create_hook, run, run_in_terminal
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
    assert run(database_url, "stats").stdout.startswith("owner\twebhook\turl\t")  # piped: plain lines

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


def test_every_command_on_an_unmigrated_database_says_to_migrate(make_database: Any) -> None:
    url = make_database("outbox_cli_bare")
    commands = [
        ["stats"], ["webhooks", "list"], ["webhooks", "list", "--owner", "v"],
        ["webhooks", "create", "--owner", "v", "--url", "https://e.com/", "--event", "*"],
        ["emit", "--owner", "v", "--type", "order.created", "--data", "{}"],
        ["api-keys", "create", "--owner", "v"], ["event-types", "list"], ["purge", "--older-than", "30d"],
        ["redeliver", "1", "--owner", "v"], ["deliveries", "list"], ["events", "list"], ["config", "show"],
    ]  # fmt: skip
    for command in commands:
        result = run(url, *command)
        assert result.returncode == 1, command
        [line] = result.stderr.splitlines()
        assert "run `outbox-worker migrate`" in line, command
    started = time.monotonic()
    worker = run(url, "run")
    assert worker.returncode == 1 and time.monotonic() - started < 20
    assert "run `outbox-worker migrate`" in worker.stderr.splitlines()[-1]
    assert "Traceback" not in worker.stderr and "worker started" not in worker.stderr


@pytest.mark.parametrize("url", ["postgres//oops", "mysql://user:hunter2@db/app"])
def test_a_malformed_database_url_is_one_line_naming_the_variable(url: str) -> None:
    result = run(url, "stats")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: OUTBOX_DATABASE_URL: ") and "postgresql://" in line
    assert "hunter2" not in line


def test_json_is_taken_after_the_command_and_errors_are_json_too(database_url: str) -> None:
    listed = run(database_url, "event-types", "list", "--json")
    assert listed.returncode == 0 and "order.created" in {t["name"] for t in json.loads(listed.stdout)}
    missing = run(
        database_url, "webhooks", "delete", "00000000-0000-0000-0000-000000000000", "--owner", "v", "--json"
    )
    assert missing.returncode == 1 and missing.stdout == ""
    assert "not found" in json.loads(missing.stderr)["error"]
    usage = run(database_url, "--json", "emit", "--owner", "v")
    assert usage.returncode == 2 and "--type" in json.loads(usage.stderr)["error"]


def test_ids_keys_and_secrets_are_never_cut_or_wrapped(database_url: str) -> None:
    shown = run_in_terminal(
        database_url, "api-keys", "create", "--owner", "a-rather-long-owner-name-for-width"
    )
    key = next(line.split()[-1] for line in shown.splitlines() if line.startswith("key "))
    assert key.startswith("brut_") and len(key) > 40
    with psycopg.connect(database_url) as conn:
        from outbox_worker import api_keys

        assert api_keys.api_key_owner(conn, key) == "a-rather-long-owner-name-for-width"  # whole and usable
    hook = json.loads(create_hook(database_url).stdout)[0]
    assert hook["id"] in run_in_terminal(database_url, "webhooks", "list", "--owner", "v")
    piped = run(database_url, "webhooks", "list", "--owner", "v").stdout.splitlines()
    assert piped[0].split("\t")[:2] == ["id", "owner"] and piped[1].split("\t")[0] == hook["id"]
    assert (
        run(database_url, "webhooks", "list").stdout.splitlines()[1].split("\t")[0] == hook["id"]
    )  # every owner


def test_deliveries_and_events_lists_find_the_id_to_redeliver(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    create_hook(database_url)
    ids = [_finished_delivery(conn, "failed", f"{n} hours") for n in range(3)]
    conn.execute(
        "update outbox.deliveries d set created_at = e.created_at "
        "from outbox.events e where e.id = d.event_id"
    )
    failed = json.loads(
        run(database_url, "--json", "deliveries", "list", "--owner", "v", "--status", "failed").stdout
    )
    assert [d["id"] for d in failed] == sorted(ids, reverse=True)
    first = run(database_url, "deliveries", "list", "--limit", "2")
    assert "more: add --before" in first.stderr
    before = first.stderr.split("--before ")[1].split()[0]
    rest = json.loads(
        run(database_url, "--json", "deliveries", "list", "--limit", "2", "--before", before).stdout
    )
    assert [d["id"] for d in rest] == [min(ids)]
    recent = json.loads(run(database_url, "--json", "deliveries", "list", "--since", "30min").stdout)
    assert [d["id"] for d in recent] == [ids[0]]
    events = json.loads(
        run(database_url, "--json", "events", "list", "--owner", "v", "--type", "order.created").stdout
    )
    assert len(events) == 3 and all((e["deliveries"], e["failed"]) == (1, 1) for e in events)
    assert run(database_url, "redeliver", str(failed[0]["id"]), "--owner", "v").returncode == 0


def test_purge_refuses_ambiguous_units_and_previews_with_dry_run(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    create_hook(database_url)
    _finished_delivery(conn, "delivered", "40 days")
    _finished_delivery(conn, "delivered", "1 day")
    for ambiguous in ("1m", "2w", "3mo"):
        refused = run(database_url, "purge", "--older-than", ambiguous)
        assert refused.returncode == 2 and "one of d, h, min, s" in refused.stderr
    assert "minutes or months" in run(database_url, "purge", "--older-than", "1m").stderr
    preview = run(database_url, "purge", "--older-than", "30d", "--dry-run")
    assert preview.returncode == 0 and "would purge 1 events (1 deliveries, 1 attempts)" in preview.stdout
    assert conn.execute("select count(*) from outbox.events").fetchone() == (2,)  # nothing went
    as_json = json.loads(run(database_url, "--json", "purge", "--older-than", "90min", "--dry-run").stdout)[0]
    assert (as_json["events"], as_json["dry_run"]) == (2, True)
    assert "purged 1 events" in run(database_url, "purge", "--older-than", "720h").stdout
