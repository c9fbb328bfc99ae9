"""The wake-up hint: one dedicated LISTEN connection, outside the pool.

A notification only wakes: an empty payload (from an emitting transaction)
the dispatcher, ``deliveries`` (from a busy peer with more than it has room
for) the sender. The
connection is re-established (and re-LISTENed) with backoff whenever it
drops, e.g. across a Postgres restart or ``pg_terminate_backend``; while it
is down the worker keeps going on its poll interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import psycopg

from outbox_worker import db
from outbox_worker.sql import query

CHANNEL = "outbox_events"
NUDGE_EVERY = 0.1

# pooling.Policy.check: may this new connection keep session state? LISTEN
# and a session lock stay on the server connection, which a transaction-mode
# pooler goes on to lend to other clients.
SessionCheck: TypeAlias = Callable[[psycopg.AsyncConnection[Any]], Awaitable[bool]]


async def _always(_: psycopg.AsyncConnection[Any]) -> bool:
    return True


class Listener:
    def __init__(
        self, conninfo: str, on_notify: Callable[[str], None], log: Any, session_ok: SessionCheck = _always
    ) -> None:
        self._conninfo = conninfo
        self._on_notify = on_notify
        self._log = log.bind(component="listener")
        self._session_ok = session_ok
        self.connected = False
        self.refused = False  # no session to LISTEN on: the worker polls
        self.reconnects = 0

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, keepalives=1, keepalives_idle=10, keepalives_interval=5
                ) as conn:
                    if not await self._session_ok(conn):
                        self.refused = True
                        self._log.info("not listening: the connection keeps no session", channel=CHANNEL)
                        return
                    await conn.execute(query("listen"))
                    self.connected = True
                    delay = 0.1
                    self._log.info("listening", channel=CHANNEL)
                    self._on_notify("")  # anything committed while we were away
                    async for note in conn.notifies():
                        self._on_notify(note.payload)
            except psycopg.Error as exc:
                self._log.warning("listen connection lost", error=str(exc).strip(), retry_in=delay)
            finally:
                if self.connected:
                    self.reconnects += 1
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class BusyFlag:
    """Quiet NOTIFY, the worker's side (the emit trigger's comment in ``sql/schema.sql``).

    While a worker holds "busy", emitting transactions skip their NOTIFY, so
    under load they no longer commit one at a time behind PostgreSQL's notify
    lock. The holder must then find every event itself: it polls on a short
    interval and lets go only when ``outbox.release_busy()`` says no emitter
    that skipped its NOTIFY is still uncommitted; one more claim after that
    sees all their events, and the next emitter notifies again.

    The lock is session-level, on a connection of its own (not the pool's,
    whose connections change hands), so a worker that dies or loses that
    connection lets go with it.
    """

    def __init__(self, conninfo: str, log: Any, session_ok: SessionCheck = _always) -> None:
        self._conninfo = conninfo
        self._log = log.bind(component="busy-flag")
        self._session_ok = session_ok
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.held = False
        self.refused = False  # no session to hold it in: emitters always notify
        self._nudged = 0.0

    async def _run(self, name: str) -> Any:
        if self.refused:
            return None
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                if not await self._session_ok(self._conn):
                    self.refused = True
                    await self.close()
                    return None
            rows = await db.fetch_async(self._conn, name, {})
            return next(iter(rows[0].values())) if rows else None
        except Exception as exc:
            # Whatever happened, the lock must not outlive our knowledge of
            # it: closing the session drops it on the server.
            self._log.warning("busy flag connection lost", error=str(exc).strip())
            await self.close()
            return None

    async def acquire(self) -> bool:
        """Try to become the busy worker (another one may already be)."""
        if not self.held:
            self.held = bool(await self._run("busy_acquire"))
        return self.held

    async def release(self) -> bool:
        """Let go once it is safe; False while an emitter that skipped NOTIFY is in flight."""
        if self.held:
            released = await self._run("busy_release")
            # None: the connection is gone, and the lock with it.
            self.held = released is False
        return not self.held

    async def nudge_peers(self) -> None:
        """Wake the other workers' senders: while we hold "busy", nobody else
        notifies them, and we are leaving deliveries we have no room for.
        At most every NUDGE_EVERY seconds: one wake-up keeps a sender
        claiming until the backlog is gone."""
        now = time.monotonic()
        if self.held and now - self._nudged >= NUDGE_EVERY:
            self._nudged = now
            await self._run("nudge_peers")

    async def close(self) -> None:
        conn, self._conn, self.held = self._conn, None, False
        if conn is not None:
            await conn.close()
