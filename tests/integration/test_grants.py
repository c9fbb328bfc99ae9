"""Database roles, tested with real logins."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from outbox_worker import emit, pooling, webhooks
from outbox_worker.db import as_url
from tests.cli import run
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker, settled

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def roles(database_url: str, conn: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    suffix = f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{uuid.uuid4().hex[:6]}"
    names = {kind: f"outbox_{kind}_{suffix}" for kind in ("app", "worker", "dba")}
    result = run(
        database_url, "grant", "--create",
        "--app", names["app"], "--worker", names["worker"], "--dba", names["dba"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    yield names
    for name in names.values():
        conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


def login(database_url: str, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(as_url(database_url, user=role), autocommit=True)


def test_app_can_only_emit(database_url: str, conn: psycopg.Connection[Any], roles: dict[str, str]) -> None:
    webhooks.create_webhook(conn, "v", "https://example.com/h", ["*"])
    with login(database_url, roles["app"]) as app:
        assert emit(app, "v", "order.created", {"id": 1}) > 0
        app.execute(
            "insert into outbox.events (owner_id, event_type, data) values ('v', 'order.created', '{}')"
        )
        # With keys: the trigger records the key, emit reads the first event's id back.
        keyed = emit(app, "v", "order.created", {}, ordering_key="o-1", idempotency_key="k")
        assert emit(app, "v", "order.created", {}, idempotency_key="k") == keyed
        app.execute(
            "insert into outbox.events (owner_id, event_type, data, ordering_key, idempotency_key) "
            "values ('v', 'order.created', '{}', 'o-1', 'k')"
        )
        # The trace context, by emit and by the fused INSERT.
        emit(app, "v", "order.created", {}, traceparent=TRACEPARENT)
        app.execute(
            "insert into outbox.events (owner_id, event_type, data, traceparent) "
            "values ('v', 'order.created', '{}', %s)",
            (TRACEPARENT,),
        )
        for forbidden in (
            "select data from outbox.events",
            "select * from outbox.webhooks",
            "select * from outbox.delivery_log",
            "update outbox.events set data = '{}'",
            "select * from outbox.create_webhook('v', 'https://example.com/x', array['*'])",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(forbidden)
    assert conn.execute("select count(*) from outbox.events").fetchone() == (5,)


def test_dba_reads_logs_but_never_secrets(
    database_url: str, conn: psycopg.Connection[Any], roles: dict[str, str]
) -> None:
    created = webhooks.create_webhook(
        conn, "v", "https://example.com/h", ["*"], headers={"Authorization": "Bearer t0ken"}, rate_limit=5
    )
    with login(database_url, roles["dba"]) as dba:
        for query in (
            "select * from outbox.delivery_log",
            "select * from outbox.queue_stats",
            "select * from outbox.event_backlog",
            "select * from outbox.webhook_info",
            "select id, url, enabled, rate_limit from outbox.webhooks",
            "select count(*) from outbox.deliveries",
            "select * from outbox.idempotency_keys",
        ):
            dba.execute(query).fetchall()
        for forbidden in (
            "select secret from outbox.webhooks",
            "select * from outbox.webhooks",
            "select previous_secret from outbox.webhooks",
            "select headers from outbox.webhooks",
            "delete from outbox.deliveries",
            "select outbox.emit('v', 'order.created', '{}')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                dba.execute(forbidden)
        everything = str(dba.execute("select * from outbox.webhook_info").fetchall())
        assert created.secret not in everything and "t0ken" not in everything
        assert "Authorization" in everything  # the names are not secret


async def test_worker_role_delivers_and_manages(
    database_url: str, conn: psycopg.Connection[Any], roles: dict[str, str]
) -> None:
    receiver = await Receiver().start()
    worker_url = as_url(database_url, user=roles["worker"])
    try:
        with login(database_url, roles["worker"]) as ops:
            webhooks.create_webhook(ops, "v", receiver.url("/h"), ["order.created"])
        with login(database_url, roles["app"]) as app:
            emit(app, "v", "order.created", {"id": 1})
        async with running_worker(worker_url):
            await eventually(lambda: settled(database_url, 1), timeout=15)
        assert len(receiver.requests) == 1
    finally:
        await receiver.stop()


def test_grant_needs_a_role(database_url: str) -> None:
    result = run(database_url, "grant")
    assert result.returncode == 2 and "name at least one of" in result.stderr


def test_the_worker_session_settings_go_on_its_role_only_when_asked(
    database_url: str, roles: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a transaction-mode pooler, where the worker sets nothing itself."""
    show = "select " + ", ".join(f"current_setting('{name}')" for name in pooling.WATCHED)
    with login(database_url, roles["worker"]) as worker:
        server = worker.execute(show).fetchone()
    done = run(database_url, "grant", "--worker", roles["worker"], "--session-settings")
    assert done.returncode == 0, done.stderr
    assert f"{roles['worker']}: enable_seqscan = off, jit = off" in done.stdout
    with login(database_url, roles["worker"]) as worker:
        assert worker.execute(show).fetchone() == ("off", "off", "off", "force_generic_plan")
    with login(database_url, roles["app"]) as app:
        assert app.execute(show).fetchone() == server  # the role's own, nobody else's
    # OUTBOX_SYNCHRONOUS_COMMIT=true: the worker's commits wait for the flush again.
    monkeypatch.setenv("OUTBOX_SYNCHRONOUS_COMMIT", "true")
    assert run(database_url, "grant", "--worker", roles["worker"], "--session-settings").returncode == 0
    with login(database_url, roles["worker"]) as worker:
        assert worker.execute(show).fetchone() == (
            server[0] if server else None,
            "off",
            "off",
            "force_generic_plan",
        )
    refused = run(database_url, "grant", "--app", roles["app"], "--session-settings")
    assert refused.returncode == 2 and "--session-settings needs --worker" in refused.stderr
