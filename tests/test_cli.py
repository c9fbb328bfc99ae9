"""The console script against a real database, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg


def run(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OUTBOX_DATABASE_URL": database_url, "OUTBOX_LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "outbox_worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_on_an_empty_database(make_database: Any) -> None:
    url = make_database("outbox_cli")
    first = run(url, "migrate")
    assert first.returncode == 0, first.stderr
    assert "revision 0001" in first.stdout
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
