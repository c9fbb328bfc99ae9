"""``sql/schema.sql`` and the migrations build the same schema, and the
downgrade to base leaves the database as it found it.

The comparison reads the catalogue (``pg_get_*def`` and friends) rather than
``pg_dump``, so it needs no client binaries and no text normalising: every
column, default, constraint, index, view, function body, trigger, comment,
privilege and seeded row of the ``outbox`` schema, by name.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory

from outbox_worker import migrate
from outbox_worker.sql import sql_dir

Snapshot = dict[str, list[tuple[Any, ...]]]

# Each query describes one kind of object of the outbox schema, ordered by
# name so that creation order and oids do not count.
CATALOGUE = {
    "schema": """
        select n.nspname, n.nspacl::text from pg_namespace n where n.nspname = 'outbox'
    """,
    "relations": """
        select c.relname, c.relkind::text, c.relpersistence::text, c.relacl::text, c.reloptions::text,
               c.relrowsecurity, c.relforcerowsecurity, c.relreplident::text
          from pg_class c
         where c.relnamespace = 'outbox'::regnamespace and c.relkind <> 't'
         order by 1
    """,
    # Position, not attnum: a column dropped on the way leaves a gap in attnum.
    "columns": """
        select c.relname, a.attname, row_number() over (partition by c.oid order by a.attnum),
               format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
               a.attidentity::text, a.attgenerated::text, a.attcompression::text, a.attacl::text,
               a.attcollation::regcollation::text
          from pg_attribute a
          join pg_class c on c.oid = a.attrelid
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where c.relnamespace = 'outbox'::regnamespace and c.relkind <> 't'
           and a.attnum > 0 and not a.attisdropped
         order by 1, 3
    """,
    "constraints": """
        select coalesce(c.relname, t.typname), k.conname, k.contype::text, pg_get_constraintdef(k.oid)
          from pg_constraint k
          left join pg_class c on c.oid = k.conrelid
          left join pg_type t on t.oid = k.contypid
         where k.connamespace = 'outbox'::regnamespace
         order by 1, 2
    """,
    "indexes": """
        select c.relname, pg_get_indexdef(i.indexrelid)
          from pg_index i join pg_class c on c.oid = i.indexrelid
         where c.relnamespace = 'outbox'::regnamespace
         order by 1
    """,
    "sequences": """
        select c.relname, s.seqtypid::regtype::text, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
               s.seqcache, s.seqcycle
          from pg_sequence s join pg_class c on c.oid = s.seqrelid
         where c.relnamespace = 'outbox'::regnamespace
         order by 1
    """,
    "views": """
        select c.relname, pg_get_viewdef(c.oid)
          from pg_class c
         where c.relnamespace = 'outbox'::regnamespace and c.relkind in ('v', 'm')
         order by 1
    """,
    "functions": """
        select p.oid::regprocedure::text, p.prokind::text,
               case when p.prokind <> 'a' then pg_get_functiondef(p.oid) end, p.proacl::text
          from pg_proc p
         where p.pronamespace = 'outbox'::regnamespace
         order by 1
    """,
    "triggers": """
        select c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
          from pg_trigger t join pg_class c on c.oid = t.tgrelid
         where c.relnamespace = 'outbox'::regnamespace and not t.tgisinternal
         order by 1, 2
    """,
    "types": """
        select t.typname, t.typtype::text, t.typacl::text, format_type(t.typbasetype, t.typtypmod),
               (select array_agg(e.enumlabel order by e.enumsortorder)::text
                  from pg_enum e where e.enumtypid = t.oid)
          from pg_type t
         where t.typnamespace = 'outbox'::regnamespace
         order by 1
    """,
    "policies": """
        select c.relname, p.polname, p.polcmd::text, p.polpermissive, p.polroles::regrole[]::text,
               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
          from pg_policy p join pg_class c on c.oid = p.polrelid
         where c.relnamespace = 'outbox'::regnamespace
         order by 1, 2
    """,
    # Every comment on an object created in this database (oids from 16384
    # on), so a comment on a trigger or constraint counts too.
    "comments": """
        select o.type, o.identity, d.description
          from pg_description d, pg_identify_object(d.classoid, d.objoid, d.objsubid) o
         where d.objoid >= 16384
         order by 1, 2
    """,
    "event_triggers": """
        select e.evtname, e.evtevent, e.evtenabled::text, e.evtfoid::regprocedure::text, e.evttags::text
          from pg_event_trigger e
         order by 1
    """,
    "extensions": "select x.extname from pg_extension x order by 1",
    "config_row": "select to_jsonb(c) - 'singleton' from outbox.config c",
    "event_types": "select t.name, t.description from outbox.event_types t order by 1",
}


def snapshot(conn: psycopg.Connection[Any]) -> Snapshot:
    return {name: conn.execute(text).fetchall() for name, text in CATALOGUE.items()}


def differences(a: Snapshot, b: Snapshot) -> dict[str, tuple[list[Any], list[Any]]]:
    """Per kind of object, the rows only in ``a`` and the rows only in ``b``."""
    return {
        name: ([r for r in a[name] if r not in b[name]], [r for r in b[name] if r not in a[name]])
        for name in CATALOGUE
        if a[name] != b[name]
    }


def apply_schema_sql(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute((sql_dir() / "schema.sql").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def migrated_and_scripted(make_database: Any) -> tuple[str, str]:
    """One database migrated to head, one built by running sql/schema.sql."""
    migrated: str = make_database("outbox_schema_head")
    migrate.upgrade(migrated)
    scripted: str = make_database("outbox_schema_file")
    apply_schema_sql(scripted)
    return migrated, scripted


def test_schema_sql_builds_what_the_migrations_build(migrated_and_scripted: tuple[str, str]) -> None:
    migrated, scripted = migrated_and_scripted
    with psycopg.connect(migrated) as a, psycopg.connect(scripted) as b:
        head, script = snapshot(a), snapshot(b)
    assert differences(head, script) == {}
    # Not equal by being empty: every kind of object the schema has is there.
    kinds = ("relations", "columns", "constraints", "indexes", "sequences", "views", "functions", "triggers")
    assert all(head[kind] for kind in (*kinds, "types", "comments", "config_row", "event_types"))


MUTATIONS = {
    "missing index": "drop index outbox.deliveries_event_idx",
    "changed function body": """
        create or replace function outbox.new_secret() returns text
        language sql volatile set search_path = pg_catalog, pg_temp
        as $$ select 'whsec_' || encode(outbox.random_bytes_32(), 'hex') $$""",
    "changed default": "alter table outbox.deliveries alter column attempts set default 1",
    "missing grant": "revoke execute on function outbox.emit(text, text, jsonb, text, text, text) from public",  # noqa: E501
    "missing revoke": "grant execute on function outbox.compile_emit_trigger() to public",
    "missing check": (
        "alter table outbox.delivery_attempts drop constraint delivery_attempts_error_class_check"
    ),
    "missing trigger": "drop trigger webhooks_id_fixed on outbox.webhooks",
    "changed view": """
        create or replace view outbox.event_backlog as
        select count(*) as undispatched, now() - max(created_at) as oldest_undispatched_age
          from outbox.events where dispatched_at is null""",
    "changed comment": "comment on column outbox.events.body is null",
    "changed compression": "alter table outbox.events alter column body set compression pglz",
    "changed seeded config": "update outbox.config set max_webhooks_per_owner = 6",
    "missing event type": "delete from outbox.event_types where name = 'Contacts'",
}


@pytest.mark.parametrize("change", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_the_comparison_sees_a_change(migrated_and_scripted: tuple[str, str], change: str) -> None:
    _, scripted = migrated_and_scripted
    with psycopg.connect(scripted) as conn:
        before = snapshot(conn)
        conn.execute(change)
        after = snapshot(conn)
        conn.rollback()
    assert differences(before, after) != {}


# What a database holds besides the system's own objects: everything created
# in it (oids from 16384 on), by description. Alembic's version table stays
# at base, empty; it is alembic's, not the schema's.
LEFTOVERS = """
    select pg_describe_object(classid, objid, 0) as object
      from (select 'pg_namespace'::regclass as classid, oid as objid from pg_namespace
            union all select 'pg_class'::regclass, oid from pg_class
            union all select 'pg_proc'::regclass, oid from pg_proc
            union all select 'pg_type'::regclass, oid from pg_type
            union all select 'pg_constraint'::regclass, oid from pg_constraint
            union all select 'pg_trigger'::regclass, oid from pg_trigger
            union all select 'pg_event_trigger'::regclass, oid from pg_event_trigger
            union all select 'pg_extension'::regclass, oid from pg_extension
            union all select 'pg_language'::regclass, oid from pg_language
            union all select 'pg_operator'::regclass, oid from pg_operator
            union all select 'pg_cast'::regclass, oid from pg_cast
            union all select 'pg_collation'::regclass, oid from pg_collation
            union all select 'pg_policy'::regclass, oid from pg_policy
            union all select 'pg_rewrite'::regclass, oid from pg_rewrite
            union all select 'pg_default_acl'::regclass, oid from pg_default_acl
            union all select 'pg_publication'::regclass, oid from pg_publication
            union all select 'pg_foreign_server'::regclass, oid from pg_foreign_server) o
     where objid >= 16384
    union all
    select 'setting ' || s.setconfig::text
      from pg_db_role_setting s
     where s.setdatabase = (select oid from pg_database where datname = current_database())
    order by 1
"""


def leftovers(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(LEFTOVERS).fetchall()
    return [r[0] for r in rows if "outbox_alembic_version" not in r[0]]


def test_downgrade_to_base_leaves_the_database_as_before_and_upgrade_works_again(
    make_database: Any,
) -> None:
    url = make_database("outbox_schema_down")
    before = leftovers(url)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        first = snapshot(conn)
        # Roles are the cluster's, not the database's: those the migration
        # created are the ones its transaction wrote (other tests create
        # roles meanwhile).
        created_roles = conn.execute(
            "select rolname from pg_authid "
            "where xmin = (select xmin from pg_namespace where nspname = 'outbox')"
        ).fetchall()
        # History in every table, so the downgrade has data to remove.
        conn.execute("select outbox.create_webhook('o', 'https://example.com/h', '{order.created}')")
        conn.execute("select outbox.create_api_key('o')")
        conn.execute("select outbox.emit('o', 'order.created', '{}')")
        conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id) select e.id, w.id from outbox.events e, "
            "outbox.webhooks w"
        )
        conn.execute(
            "insert into outbox.delivery_attempts (delivery_id, attempt, attempted_at, duration_ms) "
            "select id, 1, now(), 1 from outbox.deliveries"
        )
    assert before != leftovers(url)  # the check sees the schema at all

    migrate.downgrade(url, "base")
    assert migrate.current_revision(url) is None
    assert leftovers(url) == before
    with psycopg.connect(url) as conn:
        still = conn.execute(
            "select rolname from pg_roles where rolname = any (%s)", ([r[0] for r in created_roles],)
        ).fetchall()
    assert still == []

    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    with psycopg.connect(url) as conn:
        assert differences(first, snapshot(conn)) == {}


def test_each_revisions_downgrade_restores_the_schema_before_it(make_database: Any) -> None:
    """Every step down undoes its step up exactly, not only the last one to base."""
    script = ScriptDirectory.from_config(migrate.alembic_config(""))
    chain = [s.revision for s in reversed(list(script.walk_revisions()))]
    url = make_database("outbox_schema_steps")
    for earlier in chain[:-1]:
        migrate.upgrade(url, earlier)
        with psycopg.connect(url) as conn:
            before = snapshot(conn)
        migrate.upgrade(url)
        migrate.downgrade(url, earlier)
        with psycopg.connect(url) as conn:
            assert differences(before, snapshot(conn)) == {}, f"downgrade to {earlier}"


def test_each_revision_downgrades_to_exactly_the_one_before(make_database: Any) -> None:
    """Upgrading to head and back down to a revision gives what migrating
    an empty database to that revision gives, data in the new columns and
    tables included."""
    script = ScriptDirectory.from_config(migrate.alembic_config(""))
    for revision in script.walk_revisions():
        if revision.down_revision is None:
            continue
        previous = str(revision.down_revision)
        direct = make_database("outbox_schema_prev")
        migrate.upgrade(direct, previous)
        round_trip = make_database("outbox_schema_back")
        migrate.upgrade(round_trip, str(revision.revision))
        with psycopg.connect(round_trip, autocommit=True) as conn:
            conn.execute("select outbox.create_webhook('o', 'https://example.com/h', '{order.created}')")
            conn.execute("select outbox.emit('o', 'order.created', '{}')")
        migrate.downgrade(round_trip, previous)
        with psycopg.connect(direct) as a, psycopg.connect(round_trip) as b:
            assert differences(snapshot(a), snapshot(b)) == {}, revision.revision
