"""Database roles: the app (emit only), the worker, and read-only DBAs.

The statements are in ``sql/grants.sql``, one section per kind of role;
role names are composed in as quoted identifiers, never as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import psycopg
from psycopg import sql as pgsql

from outbox_worker.pooling import WATCHED
from outbox_worker.sql import sql_dir

Kind = Literal["app", "worker", "dba"]
_SECTION = re.compile(r"^-- (app|worker|dba):.*$", re.MULTILINE)


def statements(kind: Kind) -> list[str]:
    text = (sql_dir() / "grants.sql").read_text(encoding="utf-8")
    marks = list(_SECTION.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        if mark.group(1) == kind:
            body = text[mark.end() : following.start() if following else len(text)]
            lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
            return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
    raise KeyError(kind)


def grant(conn: psycopg.Connection[Any], kind: Kind, role: str, *, create: bool = False) -> None:
    """Grant ``role`` the privileges of ``kind`` (creating it as a login role if asked)."""
    ident = pgsql.Identifier(role)
    if create:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
        if not exists:
            conn.execute(pgsql.SQL("create role {} login").format(ident))
    for statement in statements(kind):
        conn.execute(pgsql.SQL(statement).format(role=ident))


def store_session_settings(conn: psycopg.Connection[Any], role: str, values: Mapping[str, str]) -> None:
    """Put the worker's session settings on ``role`` (``grant --session-settings``).

    Behind a transaction-mode pooler the worker sets nothing on its sessions
    (they are lent to other clients next); a role's settings instead start
    every session the pooler opens for that role, and only for it. Settings
    the worker leaves to the server (``synchronous_commit`` with
    ``OUTBOX_SYNCHRONOUS_COMMIT=true``) are reset.
    """
    ident = pgsql.Identifier(role)
    for name in WATCHED:
        if name in values:
            statement = pgsql.SQL("alter role {} set {} = {}").format(
                ident, pgsql.Identifier(name), pgsql.Literal(values[name])
            )
        else:
            statement = pgsql.SQL("alter role {} reset {}").format(ident, pgsql.Identifier(name))
        conn.execute(statement)
