"""Retention under a steady load: batched deletes against daily partitions.

``python -m bench.retention [--rate 1000] [--webhooks 3] [--window 60] [--seconds 180]``

Finished history (events, one delivered delivery per webhook, one attempt
each) is inserted at ``--rate`` events/s straight by SQL, set-based, once a
second, with creation times as they come. Two strategies keep it to a
``--window`` of seconds, one after the other, each in a database of its own:

- **delete**: the product's retention service (``outbox_worker.retention``)
  in this process, on the real ``outbox`` schema, autovacuum as configured;
- **partition**: the same three tables range-partitioned on ``created_at``,
  30 partitions to a window (what daily partitions are to 30 days), one
  made ahead and the ones wholly past the window dropped, every second.

Each reports the outbox tables' total size over time, the CPU (and block
I/O) of the backend doing the removal per row removed, the CPU of every
PostgreSQL process per row inserted (autovacuum's work on the deletes
included), and for partitions what a hot-path statement pays: an update of
200 deliveries by id, which without the partition key probes every
partition's index.

``--throughput`` instead drains events through one real worker with
retention on and off, in alternating pairs, with old finished history
seeded for the service to remove all along: the ratio is what retention
costs the delivery hot path. ``--worker-soak`` runs one real worker with
retention set to ``--window`` under ``--rate`` events/s from
``outbox.emit``: the tables' size over time, every delivery counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import psutil
import psycopg
from psycopg_pool import AsyncConnectionPool

from bench.harness import DEFAULT_SERVER, BenchDatabase, postgres_cpu, wait_until
from bench.partitions import soak_partition
from bench.retention_drain import throughput, worker_soak
from bench.soak import (
    TABLES,
    AutovacuumCpu,
    Inserter,
    Soak,
    Vacuumer,
    backend_cost,
    paced,
    total_size,
    webhook_ids,
)
from outbox_worker import retention
from outbox_worker.logs import get_logger


async def _service_loop(url: str, window: float, stop: asyncio.Event, pids: list[int], soak: Soak) -> None:
    """The retention service as a worker runs it, on one connection kept
    for the whole soak so that its backend's CPU can be read."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
    await pool.open()
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=None)
    pids.append(conn.info.backend_pid)

    @contextlib.asynccontextmanager
    async def connect() -> Any:
        yield conn

    service = retention.Retention(pool, connect, timedelta(seconds=window), "bench", get_logger())
    try:
        while not stop.is_set():
            totals = await service.run_pass()
            if totals is not None:
                soak.removed += totals.events + totals.deliveries + totals.attempts
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), service.interval)
    finally:
        await conn.close()
        await pool.close()


def soak_delete(server: str, rate: int, webhooks: int, window: float, seconds: float, naptime: float) -> Soak:
    soak = Soak("delete")
    db = BenchDatabase(server, "retdel")
    try:
        with psycopg.connect(db.url, autocommit=True) as conn:
            inserter = Inserter(db.url, "outbox", rate, webhook_ids(conn, webhooks))
            stop = asyncio.Event()
            pids: list[int] = []
            loop = asyncio.new_event_loop()

            service = threading.Thread(
                target=loop.run_until_complete, args=(_service_loop(db.url, window, stop, pids, soak),)
            )
            service.start()
            wait_until(lambda: bool(pids), 30, "the retention service's connection")
            cpu0, io0 = backend_cost(pids[0])
            pg0 = postgres_cpu() or 0.0

            cpu_io = (cpu0, io0)

            vacuums = AutovacuumCpu(conn)
            vacuumer = Vacuumer(db.url, "outbox", naptime) if naptime else None

            def tick() -> None:
                soak.inserted += inserter.tick()
                vacuums.sample()
                if vacuumer:
                    vacuumer.tick()

            def sample(at: float) -> None:
                soak.sizes.append((at, total_size(conn, "outbox")))
                nonlocal cpu_io
                cpu_io = backend_cost(pids[0])

            try:
                paced(seconds, tick, sample, soak)
            finally:
                loop.call_soon_threadsafe(stop.set)
                service.join(120)
            soak.remover_cpu, soak.remover_io = cpu_io[0] - cpu0, cpu_io[1] - io0
            soak.postgres_cpu = (postgres_cpu() or 0.0) - pg0
            soak.inserter_cpu = inserter.cpu()
            soak.autovacuum_cpu = vacuums.total
            if vacuumer:
                soak.notes["vacuums run in autovacuum's place"] = vacuumer.runs
                soak.notes["their CPU per row removed (us)"] = round(
                    vacuumer.cpu() / max(soak.removed, 1) * 1e6, 2
                )
            stats = conn.execute(
                "select relname, n_dead_tup, autovacuum_count from pg_stat_user_tables "
                "where schemaname = 'outbox' and relname = any(%s) order by relname",
                (list(TABLES),),
            ).fetchall()
            soak.notes["autovacuum"] = {r[0]: {"dead": r[1], "autovacuums": r[2]} for r in stats}
            inserter.conn.close()
    finally:
        db.drop()
    return soak


def report(soak: Soak, window: float) -> None:
    print(f"\n## {soak.strategy}", flush=True)
    plateau = [size for at, size in soak.sizes if at >= window * 1.2]
    series = " ".join(f"{at:.0f}s:{size / 2**20:.0f}" for at, size in soak.sizes)
    print(f"size MB over time: {series}")
    if plateau:
        print(f"after 1.2 x window: min {min(plateau) / 2**20:.1f} MB, max {max(plateau) / 2**20:.1f} MB")
    print(f"rows inserted {soak.inserted:,}, removed {soak.removed:,}; inserter fell behind by at most "
          f"{soak.behind:.2f} s")  # fmt: skip
    if soak.removed:
        per_row = soak.remover_cpu / soak.removed * 1e6
        print(f"remover backend: {soak.remover_cpu:.2f} s CPU = {per_row:.2f} us/row removed, "
              f"{soak.remover_io / 2**20:.0f} MB block I/O")  # fmt: skip
    print(f"inserting backend: {soak.inserter_cpu:.2f} s CPU = "
          f"{soak.inserter_cpu / max(soak.inserted, 1) * 1e6:.2f} us/row inserted")  # fmt: skip
    if soak.removed:
        print(f"autovacuum workers on this database: {soak.autovacuum_cpu:.2f} s CPU = "
              f"{soak.autovacuum_cpu / soak.removed * 1e6:.2f} us/row removed")  # fmt: skip
    print(f"all PostgreSQL processes (other databases on the machine too): {soak.postgres_cpu:.1f} s CPU = "
          f"{soak.postgres_cpu / max(soak.inserted, 1) * 1e6:.1f} us per row inserted")  # fmt: skip
    for key, value in soak.notes.items():
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=DEFAULT_SERVER)
    parser.add_argument("--rate", type=int, default=1000, help="events/s inserted")
    parser.add_argument("--webhooks", type=int, default=3)
    parser.add_argument("--window", type=float, default=60.0, help="retention window, seconds")
    parser.add_argument("--seconds", type=float, default=180.0, help="length of each soak")
    parser.add_argument(
        "--naptime",
        type=float,
        help="seconds between vacuums in autovacuum's place (default: 10 when the server runs without "
        "autovacuum, else none)",
    )
    parser.add_argument("--only", choices=("delete", "partition"), help="one strategy")
    parser.add_argument(
        "--throughput", action="store_true", help="the drain with retention on vs off instead"
    )
    parser.add_argument(
        "--worker-soak",
        action="store_true",
        help="a real worker under --rate instead (outbox.emit, receiver)",
    )
    parser.add_argument("--events", type=int, default=20_000, help="--throughput: events drained per run")
    parser.add_argument("--old", type=int, default=100_000, help="--throughput: old events seeded per run")
    parser.add_argument(
        "--old-age",
        default="2 hours",
        help="--throughput: age of the seeded history (30 minutes: none to remove)",
    )
    parser.add_argument("--pairs", type=int, default=2, help="--throughput: on/off pairs")
    args = parser.parse_args(argv)
    if args.naptime is None:
        with psycopg.connect(args.server) as conn:
            row = conn.execute("show autovacuum").fetchone()
        args.naptime = 10.0 if row and row[0] == "off" else 0.0
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# bench.retention {started}, {psutil.cpu_count()} cores, args {vars(args)}")
    if args.worker_soak:
        worker_soak(args.server, args.rate, args.webhooks, args.window, args.seconds, args.naptime)
        return 0
    if args.throughput:
        throughput(args.server, args.events, args.webhooks, args.old, args.pairs, args.old_age)
        return 0
    for strategy in ("delete", "partition"):
        if args.only and args.only != strategy:
            continue
        run = soak_delete if strategy == "delete" else soak_partition
        report(
            run(args.server, args.rate, args.webhooks, args.window, args.seconds, args.naptime), args.window
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
