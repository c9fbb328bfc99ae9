"""The worker's connection pool hands out the connection returned last."""

from __future__ import annotations

from outbox_worker import db


async def test_the_pool_reuses_the_connection_returned_last(database_url: str) -> None:
    async with db.LifoConnectionPool(
        db.libpq_url(database_url), min_size=3, max_size=3, kwargs={"autocommit": True}, open=False
    ) as pool:
        await pool.wait()
        first, second, third = [await pool.getconn() for _ in range(3)]
        pids = [c.info.backend_pid for c in (first, second, third)]
        assert len(set(pids)) == 3
        for conn in (first, second, third):
            await pool.putconn(conn)

        # Cycling (psycopg_pool's own order) would give `first` here.
        for _ in range(3):
            async with pool.connection() as conn:
                assert conn.info.backend_pid == pids[2]

        # Two at once: the two used most recently, newest first; the third
        # stays idle until a burst needs it.
        a, b = await pool.getconn(), await pool.getconn()
        assert [a.info.backend_pid, b.info.backend_pid] == [pids[2], pids[1]]
        c = await pool.getconn()
        assert c.info.backend_pid == pids[0]
        for conn in (c, b, a):
            await pool.putconn(conn)
        assert pool.get_stats()["pool_available"] == 3
