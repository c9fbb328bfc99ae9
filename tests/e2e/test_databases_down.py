"""One worker over two PostgreSQL clusters: one is stopped while events flow
into both, and the other's deliveries go on; after its restart, everything
committed in both arrives."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from typing import Any

import psycopg

from outbox_worker import emit_async, migrate, webhooks
from tests.cluster import second_cluster
from tests.conftest import TEST_CONFIG, with_database
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import spawn_worker

POLL = 1.0  # the worker's poll interval: the longest pause the other database may see


def prepare(url: str, prefix: str, receiver_url: str) -> None:
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TEST_CONFIG)
        conn.execute("update outbox.config set message_id_prefix = %s", (prefix,))
        webhooks.create_webhook(conn, "v", receiver_url, ["order.created"])


async def emit_every(url: str, committed: list[int], stop: asyncio.Event, interval: float = 0.02) -> None:
    """Emit an event every ``interval`` until ``stop``, noting each committed
    one; while the database is away, retry the connection (nothing commits)."""
    conn: psycopg.AsyncConnection[Any] | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(url, connect_timeout=1)
            async with conn.transaction():
                event_id = await emit_async(conn, "v", "order.created", {"at": time.time()})
            committed.append(event_id)
        except psycopg.OperationalError:
            conn = None
        await asyncio.sleep(interval)
    if conn is not None:
        await conn.close()


async def test_a_stopped_cluster_pauses_only_its_own_deliveries(
    make_database: Any, server_url: str, receiver: Receiver
) -> None:
    with second_cluster() as cluster:
        here = make_database("outbox_multi_here")
        with psycopg.connect(cluster.url, autocommit=True) as admin:
            admin.execute("create database outbox_there")
        there = with_database(cluster.url, "outbox_there")
        prepare(here, "here", receiver.url("/here"))
        prepare(there, "there", receiver.url("/there"))
        worker = spawn_worker(
            [{"name": "here", "url": here}, {"name": "there", "url": there}],
            "multi-down",
            poll_interval=POLL,
            lease_seconds=10.0,
        )
        committed: dict[str, list[int]] = {"here": [], "there": []}
        stop = asyncio.Event()
        emitters = [
            asyncio.create_task(emit_every(u, committed[n], stop))
            for n, u in (("here", here), ("there", there))
        ]
        try:
            await eventually(
                lambda: min(len(receiver.on("/here")), len(receiver.on("/there"))) >= 20,
                timeout=30,
                what="both flowing",
            )
            stopped_at = time.perf_counter()
            await asyncio.to_thread(cluster.stop, "fast")
            await asyncio.sleep(4 * POLL)
            there_while_down = len(committed["there"])
            await asyncio.to_thread(cluster.start)
            restarted_at = time.perf_counter()
            await asyncio.sleep(2 * POLL)
            stop.set()
            await asyncio.gather(*emitters)

            def all_arrived() -> bool:
                return all(
                    {r.headers["webhook-id"] for r in receiver.on(f"/{name}")}
                    >= {f"evt_{name}_{n}" for n in ids}
                    for name, ids in committed.items()
                )

            await eventually(all_arrived, timeout=60, interval=0.2, what="every committed event delivered")
        finally:
            stop.set()
            for task in emitters:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*emitters, return_exceptions=True)
            worker.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(worker.communicate, timeout=30)
    assert worker.returncode == 0, err.decode()[-2000:]
    arrivals = sorted(r.at for r in receiver.on("/here"))
    during = [t for t in arrivals if stopped_at - POLL <= t <= restarted_at + POLL]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    print("here:", len(arrivals), "during:", len(during), "window:", restarted_at - stopped_at,
          "committed:", {k: len(v) for k, v in committed.items()}, "first/last:", arrivals[:1], arrivals[-1:],
          stopped_at, [round(t - stopped_at, 2) for t in arrivals[::10]])  # fmt: skip
    assert len(during) > 100, "too few deliveries of the running database while the other was down"
    print(f"longest pause of the running database's deliveries: {max(gaps):.3f} s over {len(during)}")
    assert max(gaps) < POLL, f"the running database's deliveries paused {max(gaps):.2f} s"
    assert len(committed["there"]) > there_while_down, "nothing was committed after the restart"
    log = err.decode()
    assert '"database": "there"' in log and "not answering" in log, "the outage was not reported"
