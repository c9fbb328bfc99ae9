"""A bounded set of connections lent in turn to many databases.

With a pool per database, a worker over hundreds of databases (a database
per tenant) would hold `databases x (pool + 1)` connections, nearly all idle.
With ``OUTBOX_DATABASE_CONNECTIONS`` the fleet instead keeps one
:class:`ConnectionLender`: at most ``limit`` connections open in the
process, whatever the number of databases. A turn of database A
(:mod:`~outbox_worker.turns`) runs on an idle connection to A if the lender
holds one, else on a new one, made in place of the least recently used idle
connection (to any database) once ``limit`` are open, else it waits for one
to come back. No ``LISTEN`` then: the turns poll.

The price is a connection made whenever a database's turn finds none of its
own idle: cheap next to a turn's work (fan-out, claim, completions), dear
if every statement paid it, which is why a database's work is batched into
turns (docs/databases.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Collection
from typing import Any, Protocol

import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout


class Borrower(Protocol):
    """What the lender needs of a database's pool (:class:`~outbox_worker.turns.LentPool`)."""

    @property
    def closed(self) -> bool: ...

    async def connect(self) -> psycopg.AsyncConnection[Any]: ...


class ConnectionLender:
    """At most ``limit`` open connections, shared by every database's pool."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.peak = 0  # the most open at once
        self.made = 0  # connections made so far (each turn that found none idle)
        self._idle: OrderedDict[int, tuple[Borrower, psycopg.AsyncConnection[Any]]] = OrderedDict()
        self._changed = asyncio.Condition()

    async def borrow(self, pool: Borrower, wait: float) -> psycopg.AsyncConnection[Any]:
        _, conn = await self.borrow_any(pool, (), wait)
        return conn

    async def borrow_any(
        self, pool: Borrower, others: Collection[Borrower], wait: float
    ) -> tuple[Borrower, psycopg.AsyncConnection[Any]]:
        """An idle connection of ``pool`` or of any of ``others`` (databases of
        one server, for a statement any of them can answer), else a new one
        to ``pool``'s database; with the pool it belongs to. Waits at most
        ``wait`` seconds for room."""
        deadline = time.monotonic() + wait
        evicted: psycopg.AsyncConnection[Any] | None = None
        async with self._changed:
            while True:
                for key, (owner, conn) in self._idle.items():
                    if owner is pool or owner in others:
                        del self._idle[key]
                        return owner, conn
                if self.open < self.limit:
                    self.open += 1
                    self.peak = max(self.peak, self.open)
                    break
                if self._idle:  # the least recently used idle one makes room
                    _, (_, evicted) = self._idle.popitem(last=False)
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolTimeout(f"no connection of the {self.limit} shared came back in {wait:.2f} sec")
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    continue
        try:
            if evicted is not None:
                await evicted.close()
            conn = await pool.connect()
            self.made += 1
            return pool, conn
        except BaseException:
            async with self._changed:
                self.open -= 1
                self._changed.notify()
            raise

    async def give_back(self, pool: Borrower, conn: psycopg.AsyncConnection[Any]) -> None:
        broken = conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE
        async with self._changed:
            if broken or pool.closed:
                self.open -= 1
            else:
                self._idle[id(conn)] = (pool, conn)
            self._changed.notify()
        if broken or pool.closed:
            await conn.close()

    async def forget(self, pool: Borrower) -> None:
        """Close ``pool``'s idle connections (it closes)."""
        async with self._changed:
            mine = [key for key, (owner, _) in self._idle.items() if owner is pool]
            conns = [self._idle.pop(key)[1] for key in mine]
            self.open -= len(conns)
            self._changed.notify_all()
        for conn in conns:
            await conn.close()
