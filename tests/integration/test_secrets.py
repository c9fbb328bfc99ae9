"""Webhook secrets sealed at rest with a key the database never sees."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook as StandardWebhook

from outbox_worker import db, emit, webhooks
from outbox_worker.errors import InvalidSecret, WebhookNotFound
from outbox_worker.secretbox import PREFIX, SecretBox, generate_key
from tests.cli import create_hook, run
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker, settled

KEY, NEW_KEY = generate_key(), generate_key()


def stored(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None]]:
    return conn.execute("select secret, previous_secret from outbox.webhooks").fetchall()


def test_sealed_secrets_never_reach_the_database_in_plaintext(conn: psycopg.Connection[Any]) -> None:
    box = SecretBox([KEY])
    created = webhooks.create_webhook(conn, "v", "https://example.com/h", ["*"], box=box)
    [(secret, _)] = stored(conn)
    assert secret.startswith(PREFIX) and created.secret not in secret
    assert box.open(secret) == created.secret and created.secret.startswith("whsec_")
    rotated = webhooks.rotate_webhook_secret(conn, "v", created.id, box=box)
    [(secret, previous)] = stored(conn)
    assert (
        box.open(secret) == rotated.secret and previous is not None and box.open(previous) == created.secret
    )
    # Nothing in the WAL-logged rows either: the database only ever saw sealed values.
    dump = str(conn.execute("select * from outbox.webhooks").fetchall())
    assert created.secret not in dump and rotated.secret not in dump


def test_only_wellformed_secrets_are_accepted(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.Error) as raw:
        conn.execute("select outbox.create_webhook('v', 'https://example.com/h', array['*'], 'hunter2')")
    assert raw.value.sqlstate == "OW010"
    with pytest.raises(InvalidSecret, match="expected whsec_"):
        db.fetch(
            conn,
            "create_webhook",
            {
                "owner_id": "v",
                "url": "https://example.com/h",
                "events": ["*"],
                "sealed_secret": "hunter2",
                "rate_limit": None,
                "headers": None,
            },
        )


async def test_worker_signs_with_sealed_secrets_and_seals_plaintext_ones(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    receiver = await Receiver().start()
    try:
        sealed = webhooks.create_webhook(
            conn, "v", receiver.url("/sealed"), ["order.created"], box=SecretBox([KEY])
        )
        plain = webhooks.create_webhook(conn, "v", receiver.url("/plain"), ["order.created"])  # as from psql
        emit(conn, "v", "order.created", {"id": 1})
        async with running_worker(database_url, secret_keys=[KEY]):
            await eventually(lambda: settled(database_url, 2), timeout=15)
            await eventually(
                lambda: all(s.startswith(PREFIX) for s, _ in stored(conn)),
                timeout=10,
                what="plaintext sealed",
            )
        for path, hook in (("/sealed", sealed), ("/plain", plain)):
            [got] = receiver.on(path)
            StandardWebhook(hook.secret).verify(got.body, dict(got.headers))
    finally:
        await receiver.stop()


async def test_a_worker_without_the_key_fails_clearly(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    receiver = await Receiver().start()
    try:
        webhooks.create_webhook(conn, "v", receiver.url("/h"), ["order.created"], box=SecretBox([KEY]))
        emit(conn, "v", "order.created", {"id": 1})
        async with running_worker(database_url, retry_schedule=[60, 60, 60]):
            await eventually(
                lambda: conn.execute("select count(*) from outbox.delivery_attempts").fetchone() == (1,)
            )
        assert receiver.requests == []  # nothing unsigned or wrongly signed went out
        error = conn.execute("select error from outbox.delivery_log").fetchone()
        assert error == ("a webhook secret is sealed but OUTBOX_SECRET_KEYS is not set",)
    finally:
        await receiver.stop()


def test_cli_creates_sealed_and_reseals_after_key_rotation(
    database_url: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_SECRET_KEYS", json.dumps([KEY]))
    created = create_hook(database_url)
    secret = json.loads(created.stdout)[0]["secret"]
    [(stored_secret, _)] = stored(conn)
    assert SecretBox([KEY]).open(stored_secret) == secret
    monkeypatch.setenv("OUTBOX_SECRET_KEYS", json.dumps([NEW_KEY, KEY]))
    resealed = run(database_url, "secrets", "reseal")
    assert resealed.returncode == 0 and "resealed 1 webhook secrets" in resealed.stdout
    [(after, _)] = stored(conn)
    assert after != stored_secret and SecretBox([NEW_KEY]).open(after) == secret  # the old key can go
    monkeypatch.delenv("OUTBOX_SECRET_KEYS")
    assert run(database_url, "secrets", "reseal").returncode == 2
    assert len(run(database_url, "secrets", "generate-key").stdout.strip()) == 44


def previous_secrets(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    return dict(conn.execute("select owner_id, previous_secret from outbox.webhooks").fetchall())


async def test_a_previous_secret_is_erased_once_its_overlap_ends(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    ended = webhooks.create_webhook(conn, "ended", "https://example.com/h", ["*"])
    running = webhooks.create_webhook(conn, "running", "https://example.com/h", ["*"])
    webhooks.rotate_webhook_secret(conn, "ended", ended.id)
    webhooks.rotate_webhook_secret(conn, "running", running.id)
    conn.execute("update outbox.webhooks set previous_secret_expires_at = now() where owner_id = 'ended'")
    async with running_worker(database_url):
        await eventually(
            lambda: previous_secrets(conn)["ended"] is None, what="the ended overlap's secret erased"
        )
    assert previous_secrets(conn)["running"] == running.secret  # still signing for its overlap


def test_expire_previous_secret_ends_the_overlap_now(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    hooks = [webhooks.create_webhook(conn, owner, "https://example.com/h", ["*"]) for owner in ("v", "w")]
    for owner, hook in zip(("v", "w"), hooks, strict=True):
        webhooks.rotate_webhook_secret(conn, owner, hook.id)
    with pytest.raises(WebhookNotFound):
        webhooks.expire_previous_secret(conn, "v", hooks[1].id)  # another owner's
    webhooks.expire_previous_secret(conn, "v", hooks[0].id)
    assert previous_secrets(conn) == {"v": None, "w": hooks[1].secret}
    expired = run(database_url, "webhooks", "expire-previous-secret", str(hooks[1].id), "--owner", "w")
    assert expired.returncode == 0, expired.stderr
    assert previous_secrets(conn) == {"v": None, "w": None}
    assert conn.execute(
        "select count(*) from outbox.webhooks where previous_secret_expires_at is not null"
    ).fetchone() == (0,)


def test_rotate_all_gives_every_webhook_a_new_secret(
    database_url: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_SECRET_KEYS", json.dumps([KEY]))
    old = {json.loads(create_hook(database_url, owner).stdout)[0]["secret"] for owner in ("v", "w")}
    rotated = run(database_url, "--json", "secrets", "rotate-all")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    box = SecretBox([KEY])
    current = {str(i): box.open(s) for i, s in conn.execute("select id, secret from outbox.webhooks")}
    assert {r["id"]: r["secret"] for r in new} == current and not old & set(current.values())
    assert {box.open(p) for _, p in stored(conn) if p} == old  # the old ones sign for the overlap
    after_a_leak = run(database_url, "--json", "secrets", "rotate-all", "--expire-previous")
    assert after_a_leak.returncode == 0, after_a_leak.stderr
    assert [p for _, p in stored(conn)] == [None, None]


def test_a_webhook_created_from_sql_with_a_sealed_secret_never_holds_plaintext(
    database_url: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUTBOX_SECRET_KEYS", json.dumps([KEY]))
    made = run(database_url, "--json", "secrets", "new")
    assert made.returncode == 0, made.stderr
    [pair] = json.loads(made.stdout)
    conn.execute(
        "select * from outbox.create_webhook('v', 'https://example.com/h', array['*'], sealed_secret => %s)",
        (pair["sealed_secret"],),
    )
    [(secret, _)] = stored(conn)
    assert secret == pair["sealed_secret"] and SecretBox([KEY]).open(secret) == pair["secret"]
    monkeypatch.delenv("OUTBOX_SECRET_KEYS")
    assert run(database_url, "secrets", "new").returncode == 2
