"""Headers, rate limits, test events and event keys from the command line,
delivered by a real worker process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from outbox_worker.secretbox import PREFIX, SecretBox, generate_key
from tests.cli import run
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import kill, settled, spawn_worker

KEY = generate_key()
TOKEN = "Bearer cli-t0ken"


def cli(database_url: str, *args: str) -> Any:
    result = run(database_url, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


async def test_a_test_event_reaches_the_webhook_with_its_headers(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_SECRET_KEYS", json.dumps([KEY]))
    hook = cli(
        database_url, "webhooks", "create", "--owner", "v", "--url", receiver.url("/hook"), "--event", "*",
        "--header", f"Authorization: {TOKEN}", "--header", "X-Tenant:t-1", "--rate-limit", "2.5",
    )  # fmt: skip
    assert (hook["headers"], hook["rate_limit"]) == (["Authorization", "X-Tenant"], 2.5)
    [(stored,)] = conn.execute("select headers from outbox.webhooks").fetchall()
    assert SecretBox([KEY]).open(stored["Authorization"]) == TOKEN and stored["X-Tenant"].startswith(PREFIX)
    listed = run(database_url, "--json", "webhooks", "list", "--owner", "v")
    assert TOKEN not in listed.stdout and json.loads(listed.stdout)[0]["headers"] == [
        "Authorization",
        "X-Tenant",
    ]

    sent = cli(database_url, "webhooks", "test", hook["id"], "--owner", "v")
    assert sent["event_type"] == "webhook.test"
    worker = spawn_worker(database_url, "cli-features", secret_keys=json.dumps([KEY]))
    try:
        await eventually(lambda: settled(database_url, 1), timeout=30, what="the test event")
    finally:
        kill(worker)
        await asyncio.to_thread(worker.wait, 10)
    [got] = receiver.requests
    assert (got.headers["Authorization"], got.headers["X-Tenant"]) == (TOKEN, "t-1")
    assert json.loads(got.body)["event"] == "webhook.test"
    delivered = conn.execute("select id, status::text from outbox.deliveries").fetchall()
    assert delivered == [(sent["delivery_id"], "delivered")]


def test_update_replaces_or_removes_headers_and_the_rate_limit(database_url: str) -> None:
    hook = cli(
        database_url, "webhooks", "create", "--owner", "v", "--url", "https://example.com/h", "--event", "*",
        "--header", "X-A: 1", "--rate-limit", "5",
    )  # fmt: skip
    replaced = cli(database_url, "webhooks", "update", hook["id"], "--owner", "v", "--header", "X-B: 2")
    assert (replaced["headers"], replaced["rate_limit"]) == (["X-B"], 5.0)
    cleared = cli(
        database_url, "webhooks", "update", hook["id"], "--owner", "v", "--no-headers", "--rate-limit", "0"
    )
    assert (cleared["headers"], cleared["rate_limit"]) == ([], None)


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        (["--header", "Authorization Bearer s3cret"], 2, "use 'Name: value'"),
        (["--header", "X-A: s3cret", "--header", "x-a: s3cret"], 2, "x-a is given twice"),
        (["--header", "webhook-id: s3cret"], 1, 'header "webhook-id" is reserved: the worker sets it'),
        (["--header", "X-A: s3cret\x01"], 1, 'invalid value of header "X-A"'),
        (["--rate-limit", "-1"], 1, "invalid rate limit -1: requests per second from 0.01 to 10000"),
        (["--rate-limit", "fast"], 2, "'fast' is not a valid float"),
    ],
)
def test_bad_headers_and_rate_limits_are_one_line_that_never_shows_a_value(
    database_url: str, options: list[str], code: int, message: str
) -> None:
    base = ["webhooks", "create", "--owner", "v", "--url", "https://example.com/h", "--event", "*"]
    result = run(database_url, *base, *options)
    assert result.returncode == code and message in result.stderr, result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_credentials_in_the_url_are_refused_with_a_pointer_to_headers(database_url: str) -> None:
    result = run(
        database_url,
        "webhooks",
        "create",
        "--owner",
        "v",
        "--url",
        "https://u:p@example.com/h",
        "--event",
        "*",
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "credentials (user:password@) in the URL are not allowed" in result.stderr
    assert '"Authorization": "Basic' in result.stderr


def test_emit_with_keys_and_purge_of_expired_keys(database_url: str, conn: psycopg.Connection[Any]) -> None:
    emit = ["emit", "--owner", "v", "--type", "order.created", "--data", "{}", "--idempotency-key", "k-1"]
    first = cli(database_url, *emit, "--ordering-key", "cust-1")
    assert cli(database_url, *emit)["event_id"] == first["event_id"]
    assert conn.execute("select ordering_key, idempotency_key from outbox.events").fetchall() == [
        ("cust-1", "k-1")
    ]
    conn.execute("update outbox.idempotency_keys set created_at = now() - interval '25 hours'")
    purged = run(database_url, "purge", "--older-than", "30d")
    assert purged.returncode == 0 and "and 1 expired idempotency keys" in purged.stdout
    assert cli(database_url, *emit)["event_id"] != first["event_id"]
