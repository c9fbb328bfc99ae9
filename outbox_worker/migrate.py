"""Schema migrations: alembic revisions in ``migrations/`` that run ``sql/migrations/*.sql``.

The version is kept in ``public.outbox_alembic_version`` so it never collides
with the application's own alembic history.
"""

from __future__ import annotations

from typing import Any

import psycopg
from alembic import command, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, pool

from outbox_worker import pooling
from outbox_worker.logs import get_logger
from outbox_worker.sql import migration_sql, migrations_dir

VERSION_TABLE = "outbox_alembic_version"


def run_sql_file(filename: str) -> None:
    """Execute one ``sql/migrations`` file inside the running migration."""
    # Straight to the driver: the file holds many statements and no binds.
    op.get_bind().connection.driver_connection.execute(migration_sql(filename))  # type: ignore[union-attr]


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # configparser interpolates "%" (URL-encoded passwords have them).
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def engine(database_url: str) -> Engine:
    """A one-connection engine for any libpq URL or ``key=value`` string."""
    # Nothing prepared: through a transaction-mode pooler a prepared statement
    # would outlive the migration on a server connection other clients get.
    return create_engine(
        "postgresql+psycopg://",
        poolclass=pool.NullPool,
        creator=lambda: psycopg.connect(database_url, prepare_threshold=None),
    )


class UnknownRevision(Exception):
    """The database records a revision that these migrations do not have."""


def _check_known_revision(database_url: str) -> None:
    # Alembic says only "Can't locate revision identified by '0009'"; the
    # likely causes are the pre-release chain squashed into 0001, or a newer
    # outbox-worker, and each has its own remedy.
    current = current_revision(database_url)
    script = ScriptDirectory.from_config(alembic_config(""))
    if current is not None and current not in {s.revision for s in script.walk_revisions()}:
        raise UnknownRevision(
            f"this database is at revision {current}, unknown to this outbox-worker: migrated by a "
            "pre-release chain of revisions (recreate it or drop the outbox schema) or by a newer "
            "outbox-worker (migrate with that one)"
        )


def upgrade(database_url: str, revision: str = "head", *, pooler: str = "auto") -> None:
    _check_known_revision(database_url)
    refuse_session_migrations(database_url, revision, pooler, get_logger())
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base", *, pooler: str = "auto") -> None:
    _check_known_revision(database_url)
    refuse_session_migrations(database_url, revision, pooler, get_logger(), downgrade=True)
    command.downgrade(alembic_config(database_url), revision)


def ensure_message_id_prefix(database_url: str) -> str:
    """This database's webhook-id prefix, made now (random) if it has none:
    beside other databases its ids must differ from theirs."""
    from outbox_worker import db  # db's queries: not needed by alembic's own imports

    with db.connect(database_url) as conn:
        made = db.fetch(conn, "set_message_id_prefix", {})
        prefix = made or db.fetch(conn, "message_id_prefix", {})
    return str(prefix[0]["message_id_prefix"])


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def current_revision(database_url: str) -> str | None:
    eng = engine(database_url)
    try:
        with eng.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()
    finally:
        eng.dispose()


def refuse_session_migrations(
    database_url: str,
    target: str,
    pooler: str,
    log: Any,
    *,
    downgrade: bool = False,
    script: ScriptDirectory | None = None,
) -> None:
    """Refuse, before alembic starts, to run a migration that needs a session
    through a connection that keeps none.

    Every migration runs in the one transaction alembic opens, so through a
    transaction-mode pooler it still has one server session for all its
    statements. A revision that needs more (work across its own commits, a
    session-level lock or setting) says so with a module-level
    ``needs_session = "why"``; such a revision is refused here with that
    reason, and runs against PostgreSQL directly or through a session pool.
    """
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=None) as conn:
        if pooling.Policy(pooler, log, "migrate").check_sync(conn):
            return
    if script is None:
        script = ScriptDirectory.from_config(alembic_config(""))
    current = current_revision(database_url) or "base"
    upper, lower = (current, target) if downgrade else (target, current)
    try:
        pending = list(script.iterate_revisions(upper, lower))
    except Exception:  # a relative or unknown target: alembic will say; check every revision
        pending = list(script.walk_revisions())
    needing = [
        f"{rev.revision} ({reason})"
        for rev in pending
        if (reason := getattr(rev.module, "needs_session", None))
    ]
    if needing:
        raise pooling.PoolerError(
            f"migration {', '.join(needing)} needs a database session, which a transaction-mode "
            "pooler does not keep",
            hint="run `outbox-worker migrate` against PostgreSQL directly or through a session-mode "
            "pool (OUTBOX_DATABASE_URL), then point the processes back at the pooler",
        )
