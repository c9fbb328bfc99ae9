"""One switch: the database's URL policy is the worker's, which its settings can only tighten."""

from __future__ import annotations

from typing import Any

import psycopg
import structlog

from outbox_worker import emit, webhooks
from outbox_worker.maintenance import PolicyWatcher
from outbox_worker.netpolicy import UrlPolicy
from outbox_worker.settings import Settings
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker

DEFAULTS = {name: Settings.model_fields[name].default for name in ("allow_http", "allow_private_networks")}


def delivery(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute(
        "select status::text, attempts, last_error, next_attempt_at > now() + interval '20 s' "
        "from outbox.deliveries"
    ).fetchone()


async def test_one_switch_in_the_database_opens_local_receivers(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    # tests/conftest.py opened outbox.config; the worker runs on its defaults.
    webhooks.create_webhook(conn, "v", receiver.url("/local"), ["order.created"])
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url, **DEFAULTS):
        await eventually(lambda: len(receiver.on("/local")) == 1, what="the loopback receiver reached")
    assert (delivery(conn) or ())[:3] == ("delivered", 1, None)


async def test_a_delivery_the_database_refuses_at_send_time_is_held_until_it_allows(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    hook = webhooks.create_webhook(conn, "v", receiver.url("/later"), ["order.created"])
    conn.execute("update outbox.config set allow_private_networks = false")  # closed after registering
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url, **DEFAULTS, retry_schedule=[60, 60, 60]) as worker:
        await eventually(lambda: (delivery(conn) or (None,) * 4)[2], what="the delivery held")
        status, attempts, error, later = delivery(conn) or ()
        # Not an attempt: none spent, none logged; the reason names the switch.
        assert (status, attempts, later) == ("pending", 0, True)
        assert "refused by outbox.config.allow_private_networks = false" in error
        assert conn.execute("select count(*) from outbox.delivery_attempts").fetchone() == (0,)
        assert conn.execute(
            "select failing_since is not null from outbox.webhooks where id = %s", (hook.id,)
        ).fetchone() == (True,)
        assert receiver.requests == []

        conn.execute("update outbox.config set allow_private_networks = true")
        # Within the watcher's interval, not after the hold's 30 s: the change releases it.
        await eventually(lambda: receiver.on("/later"), timeout=15, what="sent once the database allows it")
        assert worker.url_policy.allow_private
    await eventually(lambda: (delivery(conn) or ())[:2] == ("delivered", 1), what="delivered on attempt 1")


async def test_the_workers_settings_only_tighten_the_databases_policy(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    webhooks.create_webhook(conn, "v", receiver.url("/literal"), ["order.created"])
    webhooks.create_webhook(
        conn, "v", receiver.url("/name").replace("127.0.0.1", "localhost"), ["order.created"]
    )
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url, allow_private_networks=False):
        await eventually(
            lambda: (
                conn.execute("select count(*) from outbox.deliveries where last_error is not null").fetchone()
                == (2,)
            ),
            what="both deliveries held",
        )
    assert receiver.requests == []
    rows = conn.execute(
        "select d.attempts, d.last_error from outbox.deliveries d "
        "join outbox.webhooks w on w.id = d.webhook_id order by w.url"
    ).fetchall()
    assert [r[0] for r in rows] == [0, 0]
    assert all("OUTBOX_ALLOW_PRIVATE_NETWORKS=false on this worker" in r[1] for r in rows)
    assert "127.0.0.1 (loopback) is a loopback" in rows[0][1] and "localhost resolves only" in rows[1][1]


async def test_the_watcher_reads_the_databases_policy(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    from psycopg_pool import AsyncConnectionPool

    policy = UrlPolicy()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1) as pool:
        watcher = PolicyWatcher(pool, policy, structlog.get_logger())
        await watcher.run_once()
        assert (policy.known, policy.allow_http, policy.allow_private) == (True, True, True)
        conn.execute("update outbox.config set allow_http = false")
        await watcher.run_once()
        assert (policy.allow_http, policy.allow_private) == (False, True)
