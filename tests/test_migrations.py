"""Migrations build exactly the schema the code needs, and undo it."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from outbox_worker import migrate
from outbox_worker.sql import queries
from tests.helpers import compiled_emit_trigger, orphans, positional

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


def test_downgrade_to_base_removes_everything_and_upgrade_again(make_database: Any) -> None:
    url = make_database("outbox_migr")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select outbox.emit('o', 'order.created', '{}')")
    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from pg_namespace where nspname = 'outbox'").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_type where typname = 'delivery_status'").fetchone() == (
            0,
        )
    migrate.upgrade(url)
    with psycopg.connect(url) as conn:
        assert relations(conn) == EXPECTED_RELATIONS
        assert prepare_all(conn) == {}


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


def test_downgrade_of_0002_removes_only_the_api_objects(make_database: Any) -> None:
    url = make_database("outbox_migr")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select outbox.create_webhook('o', 'https://example.com/h', '{order.created}')")
        conn.execute("select outbox.create_api_key('o')")
        conn.execute("update outbox.event_types set description = 'adopted' where name = 'Deals'")
    migrate.downgrade(url, "0001")
    with psycopg.connect(url) as conn:
        assert relations(conn) == EXPECTED_RELATIONS - {
            ("api_keys", "r"),
            ("api_key_info", "v"),
            ("delivery_info", "v"),
        }
        assert conn.execute("select count(*) from outbox.webhooks").fetchone() == (1,)
        topics = {r[0] for r in conn.execute("select name from outbox.event_types where name ~ '^[A-Z]'")}
        assert topics == {"Deals"}  # adopted by an operator, so kept
    migrate.upgrade(url)
    with psycopg.connect(url) as conn:
        assert relations(conn) == EXPECTED_RELATIONS
        assert prepare_all(conn) == {}


EVENT_TYPES = ["order.created", "a.b.c.d", "single", "", "a..b", ".lead", "trail.", "Deals", "été.créé"]


def test_0004_event_patterns_match_what_0001_returned(make_database: Any) -> None:
    """0004 rewrites event_patterns for speed (plpgsql, no SET clause);
    fan-out must match exactly the webhooks it matched before, under any
    search_path of the caller. It also re-describes events.body."""
    url = make_database("outbox_migr")
    migrate.upgrade(url, "0003")
    with psycopg.connect(url, autocommit=True) as conn:
        before = [conn.execute("select outbox.event_patterns(%s)", (t,)).fetchone() for t in EVENT_TYPES]
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(
            "select l.lanname, p.proconfig from pg_proc p join pg_language l on l.oid = p.prolang "
            "where p.oid = 'outbox.event_patterns(text)'::regprocedure"
        ).fetchone() == ("plpgsql", None)
        # A caller whose search_path puts a schema with a hostile || first.
        conn.execute("create schema hostile")
        conn.execute(
            "create function hostile.cat(text[], text) returns text[] "
            "language sql as $$select '{x}'::text[]$$"
        )
        conn.execute("create operator hostile.|| (leftarg = text[], rightarg = text, function = hostile.cat)")
        conn.execute("set search_path = hostile, pg_catalog, public")
        after = [conn.execute("select outbox.event_patterns(%s)", (t,)).fetchone() for t in EVENT_TYPES]
        assert after == before
        assert conn.execute("select outbox.event_patterns(null)").fetchone() == (["*", None],)
        assert "first recorded attempt" in body_comment(conn)
    assert before[1] == (["*", "a.b.c.d", "a.*", "a.b.*", "a.b.c.*"],)
    migrate.downgrade(url, "0003")
    with psycopg.connect(url, autocommit=True) as conn:
        again = [conn.execute("select outbox.event_patterns(%s)", (t,)).fetchone() for t in EVENT_TYPES]
        assert again == before
        assert "fixed at dispatch" in body_comment(conn)


def body_comment(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "select col_description('outbox.events'::regclass, "
        "(select attnum from pg_attribute where attrelid = 'outbox.events'::regclass and attname = 'body'))"
    ).fetchone()
    assert row is not None
    return str(row[0])


def _event_guards(conn: psycopg.Connection[Any]) -> set[str]:
    """The insert triggers and CHECK constraints on outbox.events."""
    rows = conn.execute(
        "select tgname from pg_trigger where tgrelid = 'outbox.events'::regclass and not tgisinternal "
        "and tgtype & 4 <> 0 "  # TRIGGER_TYPE_INSERT: not 0006's delete cascades
        "union all select conname from pg_constraint where conrelid = 'outbox.events'::regclass "
        "and contype = 'c'"
    ).fetchall()
    return {r[0] for r in rows}


def test_0005_compiles_the_emit_trigger_and_its_downgrade_restores_0004s(make_database: Any) -> None:
    """Bad events are refused and good ones notify at both revisions; an
    event type added at 0004 is compiled in by the upgrade."""
    url = make_database("outbox_migr")
    migrate.upgrade(url, "0004")
    with psycopg.connect(url, autocommit=True) as conn:
        assert _event_guards(conn) == {"events_validate", "events_notify", "events_data_check"}
        conn.execute("select outbox.add_event_type('legacy.kind')")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _event_guards(conn) == {"events_emit"}
        assert "legacy.kind" in compiled_emit_trigger(conn)
    migrate.downgrade(url, "0004")
    with psycopg.connect(url, autocommit=True) as conn:
        assert _event_guards(conn) == {"events_validate", "events_notify", "events_data_check"}
        assert conn.execute(
            "select count(*) from pg_proc where proname in ('events_emit', 'compile_emit_trigger')"
        ).fetchone() == (0,)
    for revision in ("0004", "head"):
        migrate.upgrade(url, revision)
        with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as listener:
            listener.execute("listen outbox_events")
            with pytest.raises(psycopg.Error) as unknown:
                conn.execute("select outbox.emit('o', 'nope', '{}')")
            assert unknown.value.sqlstate == "OW002", revision
            with pytest.raises(psycopg.Error) as not_object:
                conn.execute(
                    "insert into outbox.events (owner_id, event_type, data) values ('o', 'legacy.kind', '1')"
                )
            assert not_object.value.sqlstate == "OW006", revision
            conn.execute("select outbox.emit('o', 'legacy.kind', '{}')")
            assert [n.channel for n in listener.notifies(timeout=5, stop_after=1)] == ["outbox_events"], (
                revision
            )


def _foreign_keys(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "select conname from pg_constraint where contype = 'f' and connamespace = 'outbox'::regnamespace"
    ).fetchall()
    return {r[0] for r in rows}


HOT_KEYS = {"deliveries_event_id_fkey", "deliveries_webhook_id_fkey", "delivery_attempts_delivery_id_fkey"}


def test_0006_trades_the_hot_keys_for_cascades_and_its_downgrade_restores_them(make_database: Any) -> None:
    """Up: no keys, deletes still cascade. Down: the keys again, after the
    orphans (possible only without them) are gone; the history stays."""
    url = make_database("outbox_migr")
    migrate.upgrade(url, "0005")
    with psycopg.connect(url, autocommit=True) as conn:
        assert _foreign_keys(conn) == HOT_KEYS
        conn.execute("select outbox.create_webhook('o', 'https://example.com/h', '{order.created}')")
        conn.execute("select outbox.emit('o', 'order.created', '{}')")
        conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id) select e.id, w.id from outbox.events e, "
            "outbox.webhooks w"
        )
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert _foreign_keys(conn) == set()
        assert orphans(conn) == (0, 0, 0)
        # Rows written around the worker's statements: what the keys refused.
        conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id) values (424242, gen_random_uuid())"
        )
        conn.execute(
            "insert into outbox.delivery_attempts (delivery_id, attempt, attempted_at, duration_ms) "
            "values (434343, 1, now(), 1)"
        )
        assert orphans(conn) == (1, 1, 1)
    migrate.downgrade(url, "0005")
    with psycopg.connect(url, autocommit=True) as conn:
        assert _foreign_keys(conn) == HOT_KEYS
        assert orphans(conn) == (0, 0, 0)
        assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (1,)
        cascades = conn.execute("select count(*) from pg_proc where proname like 'cascade\\_%'").fetchone()
        assert cascades == (0,)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from outbox.webhooks")
        assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (0,)


def test_0007_fixes_the_ids_and_its_downgrade_frees_them(make_database: Any) -> None:
    url = make_database("outbox_migr")
    migrate.upgrade(url)

    def lock_clause(conn: psycopg.Connection[Any]) -> bool:
        source = conn.execute(
            "select prosrc from pg_proc where oid = 'outbox.update_webhook'::regproc"
        ).fetchone()
        assert source is not None
        return "for no key update;" in source[0]

    with psycopg.connect(url, autocommit=True) as conn:
        hook = conn.execute(
            "select id from outbox.create_webhook('o', 'https://example.com/h', '{order.created}')"
        ).fetchone()
        assert hook is not None
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("update outbox.webhooks set id = gen_random_uuid()")
        assert refused.value.sqlstate == "OW011"
        assert lock_clause(conn)
    migrate.downgrade(url, "0006")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update outbox.webhooks set id = gen_random_uuid()")  # as before 0007
        assert not lock_clause(conn)
        assert conn.execute("select count(*) from pg_proc where proname = 'refuse_id_change'").fetchone() == (
            0,
        )
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute("update outbox.events set id = default")
        assert lock_clause(conn)


def test_0008_writes_new_payloads_with_lz4_and_its_downgrade_goes_back(make_database: Any) -> None:
    url = make_database("outbox_migr")
    migrate.upgrade(url, "0007")

    def methods(conn: psycopg.Connection[Any]) -> dict[str, str]:
        rows = conn.execute(
            "select attname, attcompression::text from pg_attribute "
            "where attrelid = 'outbox.events'::regclass and attname in ('data', 'body')"
        ).fetchall()
        return dict(rows)

    def whole(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute("select count(*) from outbox.events where data = %s::jsonb", (big,)).fetchone()
        assert row is not None
        return int(row[0])

    big = json.dumps({"items": [{"n": i, "text": "x" * 40} for i in range(100)]})  # ~5 KB
    with psycopg.connect(url, autocommit=True) as conn:
        has_lz4 = conn.execute(
            "select 'lz4' = any (enumvals) from pg_settings where name = 'default_toast_compression'"
        ).fetchone() == (True,)
        conn.execute("select outbox.emit('o', 'order.created', %s::jsonb)", (big,))
        assert methods(conn) == {"data": "", "body": ""}
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert methods(conn) == ({"data": "l", "body": "l"} if has_lz4 else {"data": "", "body": ""})
        conn.execute("select outbox.emit('o', 'order.created', %s::jsonb)", (big,))
        compressed = conn.execute("select pg_column_compression(data) from outbox.events order by id")
        written = [r[0] for r in compressed]
        default = conn.execute("show default_toast_compression").fetchone()
        assert default is not None
        assert written == [default[0], "lz4" if has_lz4 else default[0]]
        assert whole(conn) == 2  # both read back as written
    migrate.downgrade(url, "0007")
    with psycopg.connect(url, autocommit=True) as conn:
        assert methods(conn) == {"data": "", "body": ""}
        assert whole(conn) == 2
