"""Behind a real PgBouncer in transaction mode, shared by the worker, the API,
the CLI and an application: nothing of ours outlives a transaction."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from alembic.script import ScriptDirectory

from outbox_worker import api_keys, migrate, pooling, webhooks
from outbox_worker.api import create_app
from outbox_worker.migrate import VERSION_TABLE, head_revision
from outbox_worker.sql import migrations_dir
from tests import pgbouncer
from tests.cli import run
from tests.e2e.test_demo import run_demo
from tests.helpers import eventually, wait_for
from tests.live_server import serve
from tests.receiver import Held, Receiver
from tests.workers import kill, settled, spawn_worker

SETTINGS = ("synchronous_commit", "enable_seqscan", "jit", "plan_cache_mode", "search_path")
# What a transaction finds on the server session PgBouncer lends it.
SESSION = (
    "select "
    + ", ".join(f"current_setting('{name}')" for name in SETTINGS)
    + ", (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())"
    + ", (select count(*) from pg_prepared_statements)"
    + ", (select count(*) from pg_listening_channels())"
)
NAMES = (*SETTINGS, "advisory locks", "prepared statements", "LISTEN channels")
EMIT = "select outbox.emit('shop', 'order.created', %s::jsonb)"


def skip_without_pgbouncer(server_url: str) -> None:
    """A laptop without Debian's pgbouncer skips; CI, which installs it
    (.ci/run), fails instead, so a skip can never hide there."""
    if reason := pgbouncer.missing(server_url):
        if os.environ.get("CI"):
            pytest.fail(f"pgbouncer is needed in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture
def bouncer(server_url: str) -> Iterator[pgbouncer.PgBouncer]:
    """PgBouncer as docs/dba.md has it: transaction mode, a small pool."""
    skip_without_pgbouncer(server_url)
    with pgbouncer.running(server_url, pool_mode="transaction", pool_size=3) as running:
        yield running


def defaults(database_url: str) -> tuple[Any, ...]:
    """SESSION on a session of our own, straight to PostgreSQL: the server's defaults."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(SESSION).fetchone()
    assert row is not None
    return tuple(row)


def differing(rows: list[tuple[Any, ...]], expected: tuple[Any, ...]) -> dict[str, int]:
    """Per NAMES, how many rows differ from ``expected``."""
    return {name: sum(1 for row in rows if row[i] != expected[i]) for i, name in enumerate(NAMES)}


async def app_transactions(url: str, client: int, count: int, seen: list[tuple[Any, ...]]) -> None:
    """An application sharing the pool: each transaction reads its session, then emits."""
    async with await psycopg.AsyncConnection.connect(url, prepare_threshold=None) as app:
        for i in range(count):
            row = await (await app.execute(SESSION)).fetchone()
            await app.execute(EMIT, (json.dumps({"client": client, "i": i}),))
            await app.commit()
            assert row is not None
            seen.append(tuple(row))


async def lent_sessions(url: str, count: int = 3) -> list[tuple[Any, ...]]:
    """SESSION on every server connection of the pool: ``count`` transactions
    held open at once, so that PgBouncer lends each a different one."""
    conns = [await psycopg.AsyncConnection.connect(url, prepare_threshold=None) for _ in range(count)]
    try:
        rows = []
        for conn in conns:
            cur = await conn.execute(SESSION + ", pg_backend_pid()")
            rows.append(tuple(await cur.fetchone() or ()))
        assert len({row[-1] for row in rows}) == count, rows
        return [row[:-1] for row in rows]
    finally:
        for conn in conns:
            await conn.close()


def logged(stderr: str, fragment: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if fragment in line.get("event", "")]


async def test_a_worker_the_api_and_an_app_share_a_transaction_pool(
    database_url: str, bouncer: pgbouncer.PgBouncer, receiver: Receiver
) -> None:
    expected = defaults(database_url)
    pooled = bouncer.url(database_url)
    gate = asyncio.Event()
    held = Held(gate.wait)
    seen: list[tuple[Any, ...]] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        key = api_keys.create_api_key(conn, "shop").key
    with serve(create_app(pooled)) as api:
        async with httpx.AsyncClient(base_url=api, headers={"X-Api-Key": key}, timeout=10) as client:
            hook = receiver.script("/h", *[200] * 10, *[held] * 20)
            created = await client.post("/api/vendor/webhooks", json={"url": hook, "events": ["order.*"]})
            assert created.status_code == 201, created.text
            # Every default: LISTEN, quiet NOTIFY and prepared statements on; it must find the pooler.
            first = spawn_worker(pooled, "pooled-a", lease_seconds=3.0)
            try:
                await asyncio.gather(*(app_transactions(pooled, c, 20, seen) for c in range(4)))
                await eventually(lambda: held.running == 20, timeout=30, what="20 requests held")
            finally:
                kill(first, signal.SIGKILL)
                _, first_log = first.communicate(timeout=30)
            with psycopg.connect(database_url) as conn:
                [(leased,)] = conn.execute(
                    "select count(*) from outbox.deliveries"
                    " where leased_by = 'pooled-a' and status = 'pending'"
                ).fetchall()
            assert leased >= 20  # the crash left leases behind: the held requests' and any claimed ahead
            gate.set()
            second = spawn_worker(pooled, "pooled-b", pooler="transaction")
            try:
                await asyncio.gather(*(app_transactions(pooled, c, 10, seen) for c in range(4, 8)))
                listed = await client.get("/api/vendor/webhooks")
                assert listed.status_code == 200 and len(listed.json()["data"]) == 1, listed.text
                await eventually(
                    lambda: asyncio.to_thread(settled, database_url, 120),
                    timeout=60,
                    interval=0.1,
                    what="every event delivered",
                )
                after = await lent_sessions(pooled)
            finally:
                kill(second, signal.SIGTERM)
                _, second_log = second.communicate(timeout=30)
    # 80 + 40 application transactions, the API's and two workers' statements
    # all on three server connections: none found anything but the defaults.
    counts = differing(seen, expected)
    print(f"\nof {len(seen)} application transactions through the shared pool, not at the default: {counts}")
    assert len(seen) == 120 and counts == dict.fromkeys(NAMES, 0)
    assert differing(after, expected) == dict.fromkeys(NAMES, 0)
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {f"evt_{n}" for n in range(1, 121)}  # 120 events, none lost to the crash
    first_text, second_text = first_log.decode(), second_log.decode()
    [found] = logged(first_text, "running as OUTBOX_POOLER=transaction")
    assert found["level"] == "warning" and "LISTEN" in found["off"]
    assert "synchronous_commit=on" in found["sessions_run_with"]
    assert logged(first_text, "not listening")
    [told] = logged(second_text, "OUTBOX_POOLER=transaction: nothing is kept on a session")
    assert told["level"] == "info"


def test_the_probe_tells_pgbouncer_from_postgres(database_url: str, bouncer: pgbouncer.PgBouncer) -> None:
    # PgBouncer announces a key of its own at login, never a server's pid.
    with psycopg.connect(database_url, autocommit=True) as conn:
        direct = pooling.probe_sync(conn)
    with psycopg.connect(bouncer.url(database_url), autocommit=True) as conn:
        pooled = pooling.probe_sync(conn)
    assert not direct.proxied and not direct.switched
    assert pooled.proxied


class Recorded:
    """A structlog-shaped logger that keeps what it is told."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **_: Any) -> Recorded:
        return self

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))


def test_a_pool_by_transaction_is_caught_even_when_told_session(
    database_url: str, bouncer: pgbouncer.PgBouncer
) -> None:
    url = bouncer.url(database_url)
    busy = threading.Event()

    def other_client() -> None:  # keeps the pool busy, as other clients do
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            while not busy.is_set():
                conn.execute("select 1")

    others = [threading.Thread(target=other_client) for _ in range(2)]
    for thread in others:
        thread.start()
    log = Recorded()
    policy = pooling.Policy("session", log, "cli")

    def caught() -> bool:
        # Told "session", it trusts the pooler until two transactions of one
        # connection land on different server sessions.
        with psycopg.connect(url) as conn:
            kept = policy.check_sync(conn)
            assert kept or conn.prepare_threshold is None
            return not kept

    try:
        wait_for(caught, timeout=20, what="a probe whose two transactions ran on different server sessions")
        with psycopg.connect(url) as conn:
            policy.check_sync(conn)
    finally:
        busy.set()
        for thread in others:
            thread.join()
    [(level, event, fields)] = log.lines  # told once per process
    assert level == "error" and "OUTBOX_POOLER=session, but" in event
    assert fields["hint"] == "set OUTBOX_POOLER=transaction"


def test_the_cli_through_a_transaction_pool_prepares_nothing(
    database_url: str, bouncer: pgbouncer.PgBouncer
) -> None:
    expected = defaults(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        webhooks.create_webhook(conn, "v", "https://example.com/h", ["*"])
        conn.execute("select outbox.emit('v', 'order.created', '{}') from generate_series(1, 7)")
        conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id, status, completed_at) "
            "select e.id, w.id, 'failed', now() from outbox.events e, outbox.webhooks w"
        )
        ids = [str(r[0]) for r in conn.execute("select id from outbox.deliveries order by id")]
    # Seven runs of one statement in one transaction: psycopg would prepare
    # it from the sixth, and the prepared statement would stay on the server.
    done = run(bouncer.url(database_url), "redeliver", "--owner", "v", *ids)
    assert done.returncode == 0, done.stderr
    assert "re-queued 7 deliveries" in done.stdout
    [warned] = logged(done.stderr, "running as OUTBOX_POOLER=transaction")
    assert warned["off"] == "prepared statements"
    assert differing(asyncio.run(lent_sessions(bouncer.url(database_url))), expected) == dict.fromkeys(
        NAMES, 0
    )


def test_migrations_through_a_transaction_pool(
    make_database: Any, bouncer: pgbouncer.PgBouncer, tmp_path: Path
) -> None:
    url = make_database("outbox_pooled_migrate")
    pooled = bouncer.url(url)
    done = run(pooled, "migrate")
    assert done.returncode == 0, done.stderr
    assert f"revision {head_revision()}" in done.stdout
    assert logged(done.stderr, "running as OUTBOX_POOLER=transaction")
    with psycopg.connect(url) as conn:
        assert conn.execute(f"select version_num from {VERSION_TABLE}").fetchone() == (head_revision(),)

    # A revision that needs a session says so, and is refused through the pool.
    scripts = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "0999_session.py").write_text(
        f'revision = "0999"\ndown_revision = "{head_revision()}"\nbranch_labels = None\n'
        'depends_on = None\nneeds_session = "holds a session lock across its commits"\n\n\n'
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    script = ScriptDirectory(str(scripts))
    with pytest.raises(pooling.PoolerError) as refused:
        migrate.refuse_session_migrations(pooled, "head", "auto", Recorded(), script=script)
    message = str(refused.value)
    assert "0999 (holds a session lock across its commits) needs a database session" in message
    assert "\n" not in message and "migrate` against PostgreSQL directly" in message
    # Straight to PostgreSQL, or told the pooler keeps sessions, it may run.
    migrate.refuse_session_migrations(url, "head", "auto", Recorded(), script=script)
    with pgbouncer.running(bouncer.server_url, pool_mode="session") as session_pool:
        migrate.refuse_session_migrations(session_pool.url(url), "head", "session", Recorded(), script=script)


def test_the_demo_through_a_transaction_pool(server_url: str, bouncer: pgbouncer.PgBouncer) -> None:
    done, _ = run_demo("demo", "--orders", "3", database_url=bouncer.url(server_url))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: demo finished" in done.stdout
    assert "OUTBOX_POOLER=transaction" in done.stderr


def test_explicit_transaction_mode_turns_every_session_feature_off(database_url: str) -> None:
    from outbox_worker.worker import Worker
    from tests.workers import settings

    worker = Worker(settings(database_url, pooler="transaction", listen=True, prepare_statements=True))
    assert (worker.settings.listen, worker.settings.quiet_notify, worker.settings.prepare_statements) == (
        False,
        False,
        False,
    )

    async def session_of_a_pool_connection() -> tuple[Any, ...]:
        pool = worker._pool()
        await pool.open()
        try:
            async with pool.connection() as conn:
                assert conn.prepare_threshold is None
                row = await (await conn.execute(SESSION)).fetchone()
                return tuple(row or ())
        finally:
            await pool.close()

    # Straight to PostgreSQL too: told there is a pooler, it sets nothing.
    assert asyncio.run(session_of_a_pool_connection()) == defaults(database_url)
