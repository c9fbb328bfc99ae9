"""Migrations build exactly the schema the code needs, and undo it."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox_worker import migrate
from outbox_worker.sql import queries
from tests.cli import run
from tests.helpers import compiled_emit_trigger, positional

EXPECTED_RELATIONS = {
    ("config", "r"),
    ("event_types", "r"),
    ("webhooks", "r"),
    ("events", "r"),
    ("deliveries", "r"),
    ("delivery_attempts", "r"),
    ("webhook_info", "v"),
    ("delivery_log", "v"),
    ("queue_stats", "v"),
    ("event_backlog", "v"),
    ("api_keys", "r"),
    ("api_key_info", "v"),
    ("delivery_info", "v"),
    ("idempotency_keys", "r"),
    ("console_sessions", "r"),
    ("maintenance_leases", "r"),
    ("maintenance_runs", "r"),
}

EXPECTED_PUBLIC_FUNCTIONS = {
    "emit",
    "add_event_type",
    "create_webhook",
    "update_webhook",
    "delete_webhook",
    "list_webhooks",
    "get_webhook",
    "rotate_webhook_secret",
    "redeliver",
    "replay_failed",
    "create_api_key",
    "api_key_owner",
    "list_api_keys",
    "revoke_api_key",
    "list_deliveries",
    "get_delivery",
    "send_test_event",
    "webhook_health",
    "webhook_log_counts",
}


def relations(conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    rows = conn.execute(
        "select c.relname, c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'outbox' and c.relkind in ('r', 'v', 'm', 'p')"
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def functions(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'outbox'"
    ).fetchall()
    return {r[0] for r in rows}


def prepare_all(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Ask the server to parse and plan every named query; name -> error for the failures."""
    failures: dict[str, str] = {}
    for name, text in queries().items():
        statement, _ = positional(text)
        result = conn.pgconn.prepare(f"check_{name}".encode(), statement.encode())
        if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
            failures[name] = (result.error_message or b"").decode()
    return failures


def test_upgrade_from_empty_builds_the_expected_schema(make_database: Any) -> None:
    url = make_database("outbox_migr")
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    with psycopg.connect(url) as conn:
        assert relations(conn) == EXPECTED_RELATIONS
        assert functions(conn) >= EXPECTED_PUBLIC_FUNCTIONS
        assert prepare_all(conn) == {}
        seeded = {r[0] for r in conn.execute("select name from outbox.event_types")}
        assert {
            "order.created",
            "order.status_changed",
            "inquiry.received",
            "appointment.confirmed",
            "appointment.cancelled",
            "customer.created",
            "Deals",
            "Showings",
            "Contacts",
        } <= seeded


def test_every_query_is_checked(make_database: Any) -> None:
    # The prepare check above is only as good as the coverage of queries.sql;
    # an unparseable query would be reported, a missing one would not.
    url = make_database("outbox_migr")
    with psycopg.connect(url) as conn:
        failures = prepare_all(conn)  # empty database: every query must fail
    assert set(failures) == {name for name, text in queries().items() if "outbox." in text}
    assert all("does not exist" in message for message in failures.values())


def test_version_table_does_not_collide_with_the_apps_alembic(make_database: Any) -> None:
    url = make_database("outbox_migr")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table public.alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into public.alembic_version values ('app_rev_42')")
    migrate.upgrade(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("select version_num from public.alembic_version").fetchall() == [("app_rev_42",)]
        versions = conn.execute("select version_num from public.outbox_alembic_version").fetchall()
        assert versions == [(migrate.head_revision(),)]


def test_a_failed_migration_leaves_nothing_behind(make_database: Any) -> None:
    url = make_database("outbox_migr")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table public.marker (x int)")
        conn.execute("create schema outbox")  # conflicts with the first statement of 0001
    with pytest.raises(Exception, match="already exists"):
        migrate.upgrade(url)
    assert migrate.current_revision(url) is None
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from pg_tables where schemaname = 'outbox'").fetchone() == (0,)


def test_an_unknown_revision_fails_with_one_line(make_database: Any) -> None:
    """A database migrated by the pre-release chain (squashed into 0001)
    records a revision that no longer exists: the command says what to do."""
    url = make_database("outbox_migr")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table public.outbox_alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into public.outbox_alembic_version values ('0900')")
    with pytest.raises(migrate.UnknownRevision, match=r"revision 0900, .*pre-release chain"):
        migrate.upgrade(url)
    result = run(url, "migrate")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "pre-release chain of revisions" in result.stderr and "drop the outbox schema" in result.stderr
    assert migrate.current_revision(url) == "0900"  # nothing was run


EVENT_PATTERNS = {
    "order.created": ["*", "order.created", "order.*"],
    "a.b.c.d": ["*", "a.b.c.d", "a.*", "a.b.*", "a.b.c.*"],
    "single": ["*", "single"],
    "Deals": ["*", "Deals"],
    "order.*": ["*", "order.*", "order.*"],
}
# Refused before any work (OW009): its cost grows with the square of the dots.
NOT_EVENT_TYPES = ["", "a..b", ".lead", "trail.", "été.créé", "a" * 101, "a." * 20_000, "x\n", "*.x"]


def test_event_patterns_is_fast_and_ignores_the_callers_search_path(conn: psycopg.Connection[Any]) -> None:
    """Dispatch calls it per event: plpgsql without a SET clause (cached,
    no GUC save and restore), which names every operator by schema."""
    assert conn.execute(
        "select l.lanname, p.proconfig from pg_proc p join pg_language l on l.oid = p.prolang "
        "where p.oid = 'outbox.event_patterns(text)'::regprocedure"
    ).fetchone() == ("plpgsql", None)
    # A caller whose search_path puts a schema with a hostile || first.
    conn.execute("create schema hostile")
    conn.execute(
        "create function hostile.cat(text[], text) returns text[] language sql as $$select '{x}'::text[]$$"
    )
    conn.execute("create operator hostile.|| (leftarg = text[], rightarg = text, function = hostile.cat)")
    conn.execute("set search_path = hostile, pg_catalog, public")
    try:
        for event_type, patterns in EVENT_PATTERNS.items():
            assert conn.execute("select outbox.event_patterns(%s)", (event_type,)).fetchone() == (patterns,)
        assert conn.execute("select outbox.event_patterns(null)").fetchone() == (["*", None],)
        for refused in NOT_EVENT_TYPES:
            with pytest.raises(psycopg.Error) as error:
                conn.execute("select outbox.event_patterns(%s)", (refused,))
            assert error.value.sqlstate == "OW009", refused
    finally:
        conn.execute("reset search_path")
        conn.execute("drop schema hostile cascade")


def _event_guards(conn: psycopg.Connection[Any]) -> set[str]:
    """The insert triggers and CHECK constraints on outbox.events."""
    rows = conn.execute(
        "select tgname from pg_trigger where tgrelid = 'outbox.events'::regclass and not tgisinternal "
        "and tgtype & 4 <> 0 "  # TRIGGER_TYPE_INSERT: not the delete cascades
        "union all select conname from pg_constraint where conrelid = 'outbox.events'::regclass "
        "and contype = 'c'"
    ).fetchall()
    return {r[0] for r in rows}


def test_inserts_are_guarded_by_one_compiled_trigger(conn: psycopg.Connection[Any]) -> None:
    """No CHECK constraint and no second trigger: each would cost every
    emitting transaction a statement's worth of work (what the trigger
    refuses: tests/integration/test_emit.py, test_payload_limits.py)."""
    assert _event_guards(conn) == {"events_emit"}
    assert "order.created" in compiled_emit_trigger(conn)


def test_new_payloads_are_written_with_lz4_where_the_server_has_it(conn: psycopg.Connection[Any]) -> None:
    big = json.dumps({"items": [{"n": i, "text": "x" * 40} for i in range(100)]})  # ~5 KB
    has_lz4 = conn.execute(
        "select 'lz4' = any (enumvals) from pg_settings where name = 'default_toast_compression'"
    ).fetchone() == (True,)
    methods = conn.execute(
        "select attname, attcompression::text from pg_attribute "
        "where attrelid = 'outbox.events'::regclass and attname in ('data', 'body')"
    ).fetchall()
    assert dict(methods) == ({"data": "l", "body": "l"} if has_lz4 else {"data": "", "body": ""})
    conn.execute("select outbox.emit('o', 'order.created', %s::jsonb)", (big,))
    default = conn.execute("show default_toast_compression").fetchone()
    assert default is not None
    written = conn.execute("select pg_column_compression(data) from outbox.events").fetchall()
    assert written == [("lz4" if has_lz4 else default[0],)]
    read_back = conn.execute("select count(*) from outbox.events where data = %s::jsonb", (big,)).fetchone()
    assert read_back == (1,)
