"""``python -m bench --only multidb``: one worker over 1, 2 and 4 databases
holding the same total number of events (``OUTBOX_DATABASE_URLS``).

Each database gets its share of the events (one webhook each) before the
worker starts; the figure is the drain's rate from the first delivery to
the last, beside the one-database rate, and the worker's CPU per delivery.
The databases share one PostgreSQL server (this machine's): the ratio shows
what serving several costs the worker, not what several servers would add.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator

import psutil

from bench import receiver as receiver_mod
from bench.harness import REPO, WORKER_ENV, BenchDatabase, Options, Table, median, run_from, wait_until

COUNTS = (1, 2, 4)


@contextlib.contextmanager
def databases(server: str, count: int) -> Iterator[list[BenchDatabase]]:
    made: list[BenchDatabase] = []
    try:
        for _ in range(count):
            made.append(BenchDatabase(server, "md"))
        yield made
    finally:
        for database in made:
            database.drop()


def drain_many(dbs: list[BenchDatabase], recv: receiver_mod.Receiver, total: int) -> dict[str, float]:
    """Emit ``total`` events spread evenly over ``dbs``; one worker drains them all."""
    for i, database in enumerate(dbs):
        database.reset([f"{recv.url}/hook/{i}"])
        database.emit_bulk(total // len(dbs))
    recv.reset()
    env = {**os.environ, **WORKER_ENV, "OUTBOX_WORKER_ID": "bench-multidb"}
    env.pop("OUTBOX_DATABASE_URL", None)
    env["OUTBOX_DATABASE_URLS"] = json.dumps([{"name": f"db{i}", "url": d.url} for i, d in enumerate(dbs)])
    worker = run_from(REPO, ["-m", "outbox_worker.cli", "run"], env, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)  # fmt: skip
    process = psutil.Process(worker.pid)
    try:
        wait_until(lambda: recv.count > 0 or worker.poll() is not None, 60, "the first delivery")
        times = process.cpu_times()
        cpu_start = times.user + times.system
        expected = (total // len(dbs)) * len(dbs)
        wait_until(lambda: recv.count >= expected or worker.poll() is not None, 300, "all deliveries", 0.005)
        wait_until(lambda: all(d.outstanding() == 0 for d in dbs), 300, "outcomes written", 0.02)
        times = process.cpu_times()
        cpu = times.user + times.system - cpu_start
        if worker.poll() is not None:
            raise RuntimeError("the worker died")
    finally:
        worker.terminate()
        worker.wait(30)
    return {"rate": expected / max(recv.last - recv.first, 1e-9), "cpu_ms": cpu / expected * 1000}


def scenario_multidb(opts: Options, table: Table) -> None:
    total = opts.size(20_000, 4_000)
    rates: dict[int, list[float]] = {}
    cpus: dict[int, list[float]] = {}
    with receiver_mod.start() as recv:
        for _ in range(opts.runs):
            for count in COUNTS:
                with databases(opts.server, count) as dbs:
                    out = drain_many(dbs, recv, total)
                rates.setdefault(count, []).append(out["rate"])
                cpus.setdefault(count, []).append(out["cpu_ms"])
    one = median(rates[1])
    name = f"multidb: one worker, {total:,} events over 1/2/4 databases"
    for count in COUNTS:
        rate = median(rates[count])
        table.add(
            name,
            f"{count} database{'s' if count > 1 else ''}: deliveries/s (ratio to 1); worker CPU ms/delivery",
            f"{rate:,.0f} ({rate / one:.0%}); {median(cpus[count]):.3f}",
            "within 10% of 1 database" if count > 1 else "",
        )
