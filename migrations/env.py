"""Alembic environment: runs the SQL files of ``sql/migrations`` against the
database given by ``outbox_worker.migrate`` (or ``OUTBOX_DATABASE_URL``)."""

from __future__ import annotations

from typing import Any

from alembic import context

from outbox_worker.db import libpq_url
from outbox_worker.migrate import VERSION_TABLE, engine
from outbox_worker.settings import Settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or Settings().database_url
connection = config.attributes.get("connection")


def _run(conn: Any) -> None:
    context.configure(connection=conn, version_table=VERSION_TABLE, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(dialect_name="postgresql", version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    _run(connection)
else:
    eng = engine(libpq_url(url))
    with eng.connect() as conn:
        _run(conn)
    eng.dispose()
