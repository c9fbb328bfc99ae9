"""Vacuum horizon: the worker under sustained load while a session pins the xmin horizon.

    python bench/vacuum_horizon.py [--rate 400] [--phase 20] [--holder rr|idle]

A throwaway PostgreSQL (embedded), one ``outbox-worker run`` process, a fast
loopback receiver and an emitter at a steady rate. Three phases of equal
length: before; during, with a session holding back vacuum (``rr``: a
REPEATABLE READ transaction that has taken its snapshot; ``idle``: an
idle-in-transaction session that has written, so its xid pins the horizon);
after, once that session ends. Every interval prints deliveries/s, the
backlog (undispatched events + pending deliveries), dead tuples in
``outbox.deliveries`` and ``outbox.events``, and the p50 commit-to-receipt
latency. The worker should slow gracefully (dead index entries to skip),
never stop, and recover after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from rich.console import Console
from rich.table import Table

from outbox_worker import embedded, migrate, webhooks
from outbox_worker.loopback import serve_on_loopback


class Receiver:
    def __init__(self) -> None:
        self.count = 0
        self.latencies: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.count += 1
        self.latencies.append((time.time() - body["data"]["t"]) * 1000)
        return web.Response(text="ok")


async def emit_steadily(url: str, rate: float, stop: asyncio.Event) -> None:
    batch = max(1, int(rate / 50))  # 50 transactions a second
    async with await psycopg.AsyncConnection.connect(url) as conn:
        started = time.monotonic()
        sent = 0
        while not stop.is_set():
            await conn.execute(
                "select outbox.emit('load', 'order.created', "
                "  jsonb_build_object('t', extract(epoch from clock_timestamp())::float8, 'g', g)) "
                "from generate_series(1, %s) g",
                (batch,),
            )
            await conn.commit()
            sent += batch
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)


def sample(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "select (select count(*) from outbox.events where dispatched_at is null)"
            "     + (select count(*) from outbox.deliveries where status = 'pending'),"
            "       (select n_dead_tup from pg_stat_user_tables where relid = 'outbox.deliveries'::regclass),"
            "       (select n_dead_tup from pg_stat_user_tables where relid = 'outbox.events'::regclass),"
            "       pg_relation_size('outbox.deliveries_due_idx')"
        ).fetchone()
    assert row is not None
    return {
        "backlog": row[0],
        "dead_deliveries": row[1],
        "dead_events": row[2],
        "due_index_kb": row[3] // 1024,
    }


async def hold_horizon(url: str, holder: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(url)
    if holder == "rr":
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await conn.execute("select count(*) from outbox.events")  # takes the snapshot
    else:
        await conn.execute("create temp table pin (x int)")
        await conn.execute("insert into pin values (1)")  # an xid, then idle in transaction
    return conn


async def main(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="outbox-vacuum-"))
    url, server = embedded.start(tmp / "pg")
    worker: subprocess.Popen[bytes] | None = None
    runner: web.AppRunner | None = None
    try:
        migrate.upgrade(url)
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner, base_url = await serve_on_loopback(app)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("update outbox.config set allow_http = true, allow_private_networks = true")
            webhooks.create_webhook(conn, "load", f"{base_url}/hook", ["order.created"])
        env = {
            **os.environ,
            "OUTBOX_DATABASE_URL": url,
            "OUTBOX_ALLOW_HTTP": "true",
            "OUTBOX_ALLOW_PRIVATE_NETWORKS": "true",
            "OUTBOX_LOG_LEVEL": "error",
            "OUTBOX_METRICS_PORT": "0",
        }
        worker = subprocess.Popen([sys.executable, "-m", "outbox_worker.cli", "run"], env=env)
        stop = asyncio.Event()
        emitter = asyncio.create_task(emit_steadily(url, args.rate, stop))
        table = Table(title=f"Vacuum horizon ({args.holder}), offered {args.rate:g} events/s")
        for column in (
            "phase",
            "t (s)",
            "delivered/s",
            "p50 ms",
            "backlog",
            "dead deliveries",
            "dead events",
            "due idx KiB",
        ):
            table.add_column(column, justify="right")
        holder: psycopg.AsyncConnection[Any] | None = None
        started = time.monotonic()
        for phase in ("before", "during", "after"):
            if phase == "during":
                holder = await hold_horizon(url, args.holder)
            if phase == "after" and holder is not None:
                await holder.rollback()
                await holder.close()
            for _ in range(int(args.phase / args.interval)):
                count, lat_from = receiver.count, len(receiver.latencies)
                await asyncio.sleep(args.interval)
                window = receiver.latencies[lat_from:]
                s = await asyncio.to_thread(sample, url)
                table.add_row(
                    phase,
                    f"{time.monotonic() - started:.0f}",
                    f"{(receiver.count - count) / args.interval:.0f}",
                    f"{statistics.median(window):.1f}" if window else "-",
                    str(s["backlog"]),
                    str(s["dead_deliveries"]),
                    str(s["dead_events"]),
                    str(s["due_index_kb"]),
                )
        stop.set()
        await emitter
        Console().print(table)
        return 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        if runner is not None:
            await runner.cleanup()
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds per row")
    parser.add_argument("--holder", choices=["rr", "idle"], default="rr")
    sys.exit(asyncio.run(main(parser.parse_args())))
