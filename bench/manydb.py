"""``python -m bench --only manydb``: one worker over 200 small databases (a
database per tenant), over a bounded set of connections
(``OUTBOX_DATABASE_CONNECTIONS``) lent to them in turn.

200 databases are made from one migrated template (one webhook each, its own
webhook-id prefix) and given a few events each; one worker drains them all.
Measured: the drain's rate, the most connections the server saw from the
worker (sampled every 10 ms), the worker's CPU and peak RSS, connections
made (turns that found none idle), and then a quiet tenant's latency: one
event emitted into a database at a time, at a random moment, to its
arrival.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator

import psutil
import psycopg
from psycopg import sql

from bench import receiver as receiver_mod
from bench.harness import REPO, WORKER_ENV, Options, Table, median, run_from, wait_until
from outbox_worker import migrate
from outbox_worker.db import as_url

DATABASES = 200
CONNECTIONS = 8
POLL = 1.0


@contextlib.contextmanager
def tenant_databases(server: str, count: int, receiver_url: str) -> Iterator[list[str]]:
    """``count`` migrated databases made from one template; dropped afterwards."""
    tag = f"outbox_bench_many_{os.getpid()}"
    names = [f"{tag}_t{i}" for i in range(count)]
    template = f"{tag}_tmpl"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(template)))
    try:
        url = as_url(server, dbname=template)
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("update outbox.config set allow_http = true, allow_private_networks = true")
            conn.execute("select outbox.create_webhook('bench', %s, array['order.created'])", (receiver_url,))
        with psycopg.connect(server, autocommit=True) as admin:
            for name in names:
                admin.execute(
                    sql.SQL("create database {} template {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
        urls = [as_url(server, dbname=name) for name in names]
        for i, each in enumerate(urls):
            with psycopg.connect(each, autocommit=True) as conn:
                conn.execute("update outbox.config set message_id_prefix = %s", (f"t{i}",))
        yield urls
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            for name in [*names, template]:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def emit(url: str, count: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into outbox.events (owner_id, event_type, data) "
            "select 'bench', 'order.created', jsonb_build_object('n', g) from generate_series(1, %s) g",
            (count,),
        )


class ConnectionWatch:
    """The most connections the server shows for ``application_name``, sampled every 10 ms."""

    def __init__(self, server: str, application_name: str) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, application_name), daemon=True)
        self._thread.start()

    def _run(self, server: str, name: str) -> None:
        with psycopg.connect(server, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute("select count(*) from pg_stat_activity where application_name = %s",
                                   (name,)).fetchone()  # fmt: skip
                self.peak = max(self.peak, int(row[0]) if row else 0)
                time.sleep(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def scenario_manydb(opts: Options, table: Table) -> None:
    per_database = opts.size(20, 5)
    probes = opts.size(20, 10)
    with receiver_mod.start() as recv, tenant_databases(opts.server, DATABASES, f"{recv.url}/hook") as urls:
        for url in urls:
            emit(url, per_database)
        recv.reset()
        expected = per_database * len(urls)
        env = {**os.environ, **WORKER_ENV, "OUTBOX_WORKER_ID": "bench-manydb",
               "OUTBOX_DATABASE_CONNECTIONS": str(CONNECTIONS), "OUTBOX_POLL_INTERVAL": str(POLL),
               "OUTBOX_DATABASE_URLS": json.dumps(urls)}  # fmt: skip
        env.pop("OUTBOX_DATABASE_URL", None)
        watch = ConnectionWatch(opts.server, "outbox-worker bench-manydb")
        started = time.monotonic()
        worker = run_from(REPO, ["-m", "outbox_worker.cli", "run"], env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)  # fmt: skip
        process = psutil.Process(worker.pid)
        latencies: list[float] = []
        try:
            wait_until(
                lambda: recv.count >= expected or worker.poll() is not None, 600, "all deliveries", 0.01
            )
            drained = time.monotonic() - started
            times = process.cpu_times()
            cpu = times.user + times.system
            for url in random.sample(urls, probes):
                # At a random moment: right after the last one arrived, each
                # event would wait a whole poll interval, the probes' phase.
                time.sleep(random.uniform(0, POLL))
                before = recv.count
                emitted = time.monotonic()
                emit(url, 1)

                def arrived(before: int = before) -> bool:
                    return recv.count > before or worker.poll() is not None

                wait_until(arrived, 120, "a quiet tenant's event")
                latencies.append(time.monotonic() - emitted)
            with contextlib.suppress(OSError), open(f"/proc/{worker.pid}/status") as status:
                rss = next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")), 0)
            if worker.poll() is not None:
                raise RuntimeError("the worker died")
        finally:
            stopping = time.monotonic()
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()  # the figures above stand; the table says it did not stop
                worker.wait(10)
            stopped = time.monotonic() - stopping
            peak = watch.stop()
    name = (
        f"manydb: one worker, {DATABASES} databases x {per_database} events, {CONNECTIONS} connections lent"
    )
    table.add(
        name, "drain from the worker's start (deliveries/s; s)", f"{expected / drained:,.0f}; {drained:.1f}"
    )
    table.add(name, "most connections the server saw from the worker", str(peak), f"<= {CONNECTIONS}")
    table.add(name, "worker CPU s for the drain; peak RSS MB", f"{cpu:.1f}; {rss / 2**20:.0f}")
    table.add(name, "SIGTERM to exit (s)", f"{stopped:.1f}" if stopped < 60 else "> 60 (killed)")
    table.add(
        name,
        f"a quiet tenant's event to its arrival (s), median / max of {probes}",
        f"{median(latencies):.2f} / {max(latencies):.2f}",
        f"poll interval {POLL:.0f} s + a round of turns",
    )
