"""The wake-up hint: one dedicated LISTEN connection, outside the pool.

A notification carries no data; it only wakes the dispatcher. The
connection is re-established (and re-LISTENed) with backoff whenever it
drops, e.g. across a Postgres restart or ``pg_terminate_backend``; while it
is down the worker keeps going on its poll interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg

from outbox_worker.sql import query

CHANNEL = "outbox_events"


class Listener:
    def __init__(self, conninfo: str, on_notify: Callable[[], None], log: Any) -> None:
        self._conninfo = conninfo
        self._on_notify = on_notify
        self._log = log.bind(component="listener")
        self.connected = False
        self.reconnects = 0

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, keepalives=1, keepalives_idle=10, keepalives_interval=5
                ) as conn:
                    await conn.execute(query("listen"))
                    self.connected = True
                    delay = 0.1
                    self._log.info("listening", channel=CHANNEL)
                    self._on_notify()  # anything committed while we were away
                    async for _ in conn.notifies():
                        self._on_notify()
            except psycopg.Error as exc:
                self._log.warning("listen connection lost", error=str(exc).strip(), retry_in=delay)
            finally:
                if self.connected:
                    self.reconnects += 1
                self.connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
