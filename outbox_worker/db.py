"""The one door to the database.

Runs named queries from ``sql/queries.sql`` on whatever connection the caller
holds (psycopg 3 sync or async, a SQLAlchemy 2 ``Connection``/``Session`` or
their async forms), inside the caller's transaction, and turns the SQL
functions' ``OW`` errors into :mod:`outbox_worker.errors` exceptions.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote, urlencode

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from outbox_worker import errors
from outbox_worker.databases import libpq_url as libpq_url
from outbox_worker.sql import as_sqlalchemy, query

# SQLAlchemy is imported only when a caller hands us one of its connections:
# `outbox-worker run` never does, and importing it costs ~28 MB of RSS.
if TYPE_CHECKING:
    import sqlalchemy
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

Row: TypeAlias = dict[str, Any]
Params: TypeAlias = Mapping[str, Any]

SyncConnection: TypeAlias = "psycopg.Connection[Any] | sqlalchemy.Connection | Session"
AsyncConnection: TypeAlias = "psycopg.AsyncConnection[Any] | SAAsyncConnection | AsyncSession"


def translate(exc: BaseException) -> BaseException:
    """The OutboxError an ``OW`` database error stands for, else ``exc`` itself."""
    orig = getattr(exc, "orig", exc)  # SQLAlchemy wraps the DBAPI error
    if isinstance(orig, psycopg.Error) and orig.diag.sqlstate:
        mapped = errors.from_sqlstate(
            orig.diag.sqlstate, orig.diag.message_primary or str(orig), orig.diag.message_hint
        )
        if mapped is not None:
            return mapped
    return exc


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = translate(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def fetch(conn: SyncConnection, name: str, params: Params) -> list[Row]:
    """Run a named query on a sync connection and return its rows as dicts."""
    with _translated():
        if isinstance(conn, psycopg.Connection):
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query(name), params)
                return cur.fetchall() if cur.description else []
        import sqlalchemy

        result = conn.execute(sqlalchemy.text(as_sqlalchemy(name)), dict(params))
        return [dict(r) for r in result.mappings()]


async def fetch_async(conn: AsyncConnection, name: str, params: Params) -> list[Row]:
    """Run a named query on an async connection and return its rows as dicts."""
    with _translated():
        if isinstance(conn, psycopg.AsyncConnection):
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query(name), params)
                return await cur.fetchall() if cur.description else []
        import sqlalchemy

        result = await conn.execute(sqlalchemy.text(as_sqlalchemy(name)), dict(params))
        return [dict(r) for r in result.mappings()]


class _MostRecentFirst(deque[Any]):
    """The pool's idle connections as a stack: ``popleft`` (psycopg_pool's
    checkout) takes the one returned last."""

    def popleft(self) -> Any:
        return self.pop()


class LifoConnectionPool(AsyncConnectionPool[Any]):
    """psycopg's async pool, handing out the most recently returned
    connection first (SQLAlchemy's ``pool_use_lifo``, node-postgres' and
    Rails' default) instead of cycling through all of them.

    Why: the worker's statements come one or two at a time. Cycling sends
    each to the backend that has slept longest, whose process and caches are
    coldest. In paired drains (20,000 x 1, 4 pairs) reusing the last one gave
    6% more deliveries/s and 7% less worker CPU per delivery, and at 200
    events/s a lower commit-to-receipt p50 (docs/performance.md, "Fixed on the way").
    Idle connections still answer when a burst needs them. psycopg_pool has
    no option for this: it keeps idle connections in a deque and checks out
    with ``popleft`` (3.3); a test pins that, so an upgrade that changes it
    fails loudly instead of silently cycling again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: deque[Any] = _MostRecentFirst(self._pool)


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A plain sync connection (CLI, tests)."""
    return psycopg.connect(url, autocommit=autocommit)


def as_url(conninfo: str, **overrides: str) -> str:
    """Any libpq connection string (URL or ``key=value``) as a ``postgresql://`` URL."""
    params = {**psycopg.conninfo.conninfo_to_dict(conninfo), **overrides}
    user = quote(str(params.pop("user", "")), safe="")
    password = params.pop("password", None)
    dbname = quote(str(params.pop("dbname", "")), safe="")
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    if host.startswith("/"):  # a socket directory goes in the query string
        params["host"], host = host, ""
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    netloc = f"{auth}{host}" + (f":{port}" if port and host else "")
    if port and not host:
        params["port"] = port
    query = urlencode({k: str(v) for k, v in params.items()})
    return f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else "")


def sqlalchemy_url(url: str) -> str:
    """The libpq URL in SQLAlchemy's form, pinned to the psycopg 3 driver."""
    return "postgresql+psycopg://" + as_url(libpq_url(url)).removeprefix("postgresql://")


async def stop_tasks(tasks: list[asyncio.Task[Any]], again_after: float = 0.1) -> None:
    """Cancel ``tasks`` and return once every one has ended.

    One cancel is not always enough: on Python 3.11 ``asyncio.wait_for``
    returns the awaited result and drops a cancellation that arrives as that
    result does (CPython gh-86296; 3.12 rewrote it), and psycopg_pool's
    ``getconn`` waits that way (psycopg#1345, psycopg#1413). A loop that got
    its pool connection in that instant carries on as if never cancelled:
    the sender and maintenance loops did: 21 of 300 workers started and
    stopped at once here never returned from ``run`` (none since).
    Cancelled again, each ends at its next await.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)
    await asyncio.gather(*tasks, return_exceptions=True)  # retrieved, so none is logged as lost
