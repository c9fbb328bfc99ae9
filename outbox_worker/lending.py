"""A bounded set of connections lent in turn to many databases.

With a pool per database, a worker over hundreds of databases (a database
per tenant) would hold `databases x (pool + 1)` connections, nearly all idle.
With ``OUTBOX_DATABASE_CONNECTIONS`` the fleet instead gives each database a
:class:`LentPool`, which borrows from one :class:`ConnectionLender`: at most
``limit`` connections open in the process, whatever the number of
databases. A statement of database A runs on an idle connection to A if the
lender holds one, else on a new one, made in place of the least recently
used idle connection (to any database) once ``limit`` are open, else it
waits for one to come back. No ``LISTEN`` then: the worker polls.

The price is a connection made whenever a database's turn finds none of its
own idle: cheap next to a claim of a batch, dear if every statement paid it,
which is why the fleet polls such databases less often (docs/databases.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, PoolTimeout

Configure = Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]


class ConnectionLender:
    """At most ``limit`` open connections, shared by every :class:`LentPool`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.peak = 0  # the most open at once
        self.made = 0  # connections made so far (each turn that found none idle)
        self._idle: OrderedDict[int, tuple[LentPool, psycopg.AsyncConnection[Any]]] = OrderedDict()
        self._changed = asyncio.Condition()

    async def borrow(self, pool: LentPool, wait: float) -> psycopg.AsyncConnection[Any]:
        """A connection to ``pool``'s database, waiting at most ``wait`` seconds for room."""
        deadline = time.monotonic() + wait
        evicted: psycopg.AsyncConnection[Any] | None = None
        async with self._changed:
            while True:
                for key, (owner, conn) in self._idle.items():
                    if owner is pool:
                        del self._idle[key]
                        return conn
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
            return conn
        except BaseException:
            async with self._changed:
                self.open -= 1
                self._changed.notify()
            raise

    async def give_back(self, pool: LentPool, conn: psycopg.AsyncConnection[Any]) -> None:
        broken = conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE
        async with self._changed:
            if broken or pool.closed:
                self.open -= 1
            else:
                self._idle[id(conn)] = (pool, conn)
            self._changed.notify()
        if broken or pool.closed:
            await conn.close()

    async def forget(self, pool: LentPool) -> None:
        """Close ``pool``'s idle connections (it closes)."""
        async with self._changed:
            mine = [key for key, (owner, _) in self._idle.items() if owner is pool]
            conns = [self._idle.pop(key)[1] for key in mine]
            self.open -= len(conns)
            self._changed.notify_all()
        for conn in conns:
            await conn.close()


class LentPool(AsyncConnectionPool[Any]):
    """What a database's worker takes for its pool: ``connection()`` borrows
    from the lender. Only the pool API the worker uses is served (open,
    close, connection, getconn, putconn)."""

    def __init__(
        self,
        lender: ConnectionLender,
        conninfo: str,
        *,
        kwargs: dict[str, Any],
        configure: Configure,
        name: str,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(conninfo, min_size=0, max_size=1, open=False, name=name, timeout=timeout)
        self._lender = lender
        self._url = conninfo
        self._connect_kwargs = kwargs
        self._configure_lent = configure
        self._lent_closed = True

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs)
        try:
            await self._configure_lent(conn)
        except BaseException:
            await conn.close()
            raise
        conn._pool = self  # "async with conn" then leaves it open, as for a pool's
        return conn

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (the pool API)
        self._lent_closed = False

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (the pool API)
        self._lent_closed = True
        await self._lender.forget(self)

    @property
    def closed(self) -> bool:
        return self._lent_closed

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:  # noqa: ASYNC109
        return await self._lender.borrow(self, self.timeout if timeout is None else timeout)

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await self._lender.give_back(self, conn)
