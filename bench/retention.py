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
costs the delivery hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psutil
import psycopg
from psycopg_pool import AsyncConnectionPool

from bench import receiver as receiver_mod
from bench.run import DEFAULT_SERVER, EVENT, OWNER, BenchDatabase, Workers, postgres_cpu, wait_until
from outbox_worker import retention
from outbox_worker.logs import get_logger

BODY = b'{"event":"order.created","data":{"id":"ord_1","total":1999,"currency":"EUR"},"timestamp":"x"}'

# The finished history of one second: events, a delivered delivery per
# webhook, an attempt per delivery, in one statement.
INSERT = """
with ev as (
    insert into {schema}.events (owner_id, event_type, data, dispatched_at, body, created_at)
    select %(owner)s, %(event)s, jsonb_build_object('id', 'ord_' || g, 'total', g %% 1000, 'currency', 'EUR'),
           now(), %(body)s, coalesce(cast(%(created)s as timestamptz), clock_timestamp())
      from generate_series(1, %(n)s) g
    returning id, created_at
), dl as (
    insert into {schema}.deliveries
        (event_id, webhook_id, status, attempts, next_attempt_at, completed_at, last_status_code, created_at)
    select ev.id, w.id, 'delivered', 1, now(), now(), 200, ev.created_at
      from ev cross join unnest(cast(%(webhooks)s as uuid[])) w(id)
    returning id, created_at
)
insert into {schema}.delivery_attempts
    (delivery_id, attempt, attempted_at, duration_ms, status_code, response_body, worker_id)
select dl.id, 1, dl.created_at, 12.5, 200, 'ok', 'bench' from dl
"""

# The partitioned copy: the outbox tables' columns and indexes, each
# primary key widened by the partition key, as PostgreSQL requires.
PARTITIONED = """
create schema part;
create type part.delivery_status as enum ('pending', 'delivered', 'failed');
create table part.events (
    id bigint generated always as identity, owner_id text not null, event_type text not null,
    data jsonb not null, created_at timestamptz not null default clock_timestamp(), dispatched_at timestamptz,
    body bytea, ordering_key text, idempotency_key text, primary key (id, created_at)
) partition by range (created_at);
create index on part.events (id) where dispatched_at is null;
create table part.deliveries (
    id bigint generated always as identity, event_id bigint not null, webhook_id uuid not null,
    status part.delivery_status not null default 'pending', attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(), leased_until timestamptz, leased_by text,
    created_at timestamptz not null default now(), completed_at timestamptz, last_status_code integer,
    last_error text, ordering_key text, primary key (id, created_at),
    unique (webhook_id, event_id, created_at)
) partition by range (created_at);
create index on part.deliveries (next_attempt_at) where status = 'pending';
create index on part.deliveries (event_id);
create table part.delivery_attempts (
    id bigint generated always as identity, delivery_id bigint not null, attempt integer not null,
    attempted_at timestamptz not null, duration_ms double precision not null, status_code integer,
    error_class text, error text, response_body text, worker_id text, primary key (id, attempted_at)
) partition by range (attempted_at);
create index on part.delivery_attempts (delivery_id);
"""
TABLES = ("events", "deliveries", "delivery_attempts")


def total_size(conn: psycopg.Connection[Any], schema: str) -> int:
    """Bytes of the history tables (partitions, indexes and TOAST included)."""
    row = conn.execute(
        "select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c "
        "where c.relnamespace = cast(%s as regnamespace) and c.relkind = 'r'",
        (schema,),
    ).fetchone()
    return int(row[0]) if row else 0


def backend_cost(pid: int) -> tuple[float, int]:
    """CPU seconds and block I/O bytes (read + written) of one backend so far."""
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    io = 0
    with contextlib.suppress(psutil.Error, AttributeError):
        counters = proc.io_counters()
        io = counters.read_bytes + counters.write_bytes
    return times.user + times.system, io


@dataclass
class Soak:
    strategy: str
    sizes: list[tuple[float, int]] = field(default_factory=list)  # (seconds, bytes)
    inserted: int = 0  # rows
    removed: int = 0  # rows
    remover_cpu: float = 0.0
    remover_io: int = 0
    postgres_cpu: float = 0.0
    behind: float = 0.0  # seconds the inserter fell behind its schedule
    inserter_cpu: float = 0.0
    autovacuum_cpu: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


class AutovacuumCpu:
    """CPU of the autovacuum workers visiting one database, read each time
    :meth:`sample` is called (a worker's last instant before it exits is lost)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.seen: dict[int, float] = {}

    def sample(self) -> None:
        rows = self.conn.execute(
            "select pid from pg_stat_activity where backend_type = 'autovacuum worker' "
            "and datname = current_database()"
        ).fetchall()
        for (pid,) in rows:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                self.seen[pid] = times.user + times.system

    @property
    def total(self) -> float:
        return sum(self.seen.values())


class Vacuumer:
    """Autovacuum's part, for a server that runs without it (this machine's
    has autovacuum = off, for steady benchmarks): every ``naptime`` seconds,
    a table whose dead rows exceed autovacuum's trigger (50 + 20% of its
    rows, the defaults) is vacuumed. Its backend's CPU is the vacuum's cost."""

    TRIGGER = """
        select s.relname from pg_stat_user_tables s
         where s.schemaname = %s and s.relname = any(%s)
           and s.n_dead_tup > 50 + 0.2 * greatest(s.n_live_tup, 0)
    """

    def __init__(self, url: str, schema: str, naptime: float) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.schema = schema
        self.naptime = naptime
        self.pid = self.conn.info.backend_pid
        self.cpu0 = backend_cost(self.pid)[0]
        self.last = time.monotonic()
        self.runs = 0

    def tick(self) -> None:
        if time.monotonic() - self.last < self.naptime:
            return
        self.last = time.monotonic()
        for (name,) in self.conn.execute(self.TRIGGER, (self.schema, list(TABLES))).fetchall():
            self.conn.execute(f"vacuum {self.schema}.{name}")
            self.runs += 1

    def cpu(self) -> float:
        return backend_cost(self.pid)[0] - self.cpu0


class Inserter:
    def __init__(self, url: str, schema: str, rate: int, webhooks: list[str]) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.pid = self.conn.info.backend_pid
        self.cpu0 = backend_cost(self.pid)[0]
        self.statement = INSERT.format(schema=schema)
        self.params = {
            "owner": OWNER,
            "event": EVENT,
            "body": BODY,
            "n": rate,
            "webhooks": webhooks,
            "created": None,
        }
        self.rows_per_tick = rate * (1 + 2 * len(webhooks))

    def tick(self) -> int:
        self.conn.execute(self.statement, self.params)
        return self.rows_per_tick

    def cpu(self) -> float:
        return backend_cost(self.pid)[0] - self.cpu0


def webhook_ids(conn: psycopg.Connection[Any], count: int) -> list[str]:
    ids = []
    for i in range(count):
        row = conn.execute(
            "select id from outbox.create_webhook(%s, %s, array[%s])",
            (OWNER, f"https://hook{i}.example", EVENT),
        ).fetchone()
        assert row is not None
        ids.append(str(row[0]))
    return ids


def paced(seconds: float, tick: Any, sample: Any, soak: Soak) -> None:
    """Call ``tick`` once a second for ``seconds``; ``sample`` every 5 s."""
    start = time.monotonic()
    for second in range(int(seconds)):
        due = start + second
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        else:
            soak.behind = max(soak.behind, now - due)
        tick()
        if second % 5 == 0:
            sample(time.monotonic() - start)
    sample(time.monotonic() - start)


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


def _partition_bounds(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, float, float]]:
    rows = conn.execute(
        "select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i "
        "join pg_class c on c.oid = i.inhrelid where i.inhparent = cast(%s as regclass)",
        (f"part.{table}",),
    ).fetchall()
    out = []
    for name, bound in rows:
        # FOR VALUES FROM ('...') TO ('...')
        low, high = (part.split("'")[1] for part in bound.split(" TO "))
        out.append((name, _epoch(conn, low), _epoch(conn, high)))
    return out


def _epoch(conn: psycopg.Connection[Any], text: str) -> float:
    row = conn.execute("select extract(epoch from cast(%s as timestamptz))", (text,)).fetchone()
    assert row is not None
    return float(row[0])


def keep_partitions(conn: psycopg.Connection[Any], width_ms: int, window: float) -> int:
    """Create the partitions of the next two seconds (at least one ahead),
    as `migrate` and the service would days ahead; drop those wholly older
    than the window. Rows dropped (counted before the drop)."""
    ahead = max(1, -(-2000 // width_ms))
    row = conn.execute("select extract(epoch from now())").fetchone()
    assert row is not None
    now = float(row[0])
    first = int(now * 1000) // width_ms * width_ms
    dropped = 0
    for table in TABLES:
        for k in range(ahead + 1):
            low = first + k * width_ms
            conn.execute(
                f"create table if not exists part.{table}_{low} partition of part.{table} "
                f"for values from (timestamptz 'epoch' + {low} * interval '1 ms') "
                f"to (timestamptz 'epoch' + {low + width_ms} * interval '1 ms')"
            )
        for name, _, high in _partition_bounds(conn, table):
            if high <= now - window:
                conn.execute(f"drop table part.{name}")
                dropped += 1
    return dropped


def soak_partition(
    server: str, rate: int, webhooks: int, window: float, seconds: float, naptime: float
) -> Soak:
    soak = Soak("partition")
    db = BenchDatabase(server, "retpart")
    width = int(window * 1000 / 30)
    try:
        with (
            psycopg.connect(db.url, autocommit=True) as conn,
            psycopg.connect(db.url, autocommit=True) as keeper,
        ):
            conn.execute(PARTITIONED)
            hooks = webhook_ids(conn, webhooks)
            keep_partitions(keeper, width, window)
            inserter = Inserter(db.url, "part", rate, hooks)
            pid = keeper.info.backend_pid
            cpu0, io0 = backend_cost(pid)
            pg0 = postgres_cpu() or 0.0
            counted = 0

            vacuums = AutovacuumCpu(conn)

            def tick() -> None:
                nonlocal counted
                soak.inserted += inserter.tick()
                counted += keep_partitions(keeper, width, window)
                vacuums.sample()

            def sample(at: float) -> None:
                soak.sizes.append((at, total_size(conn, "part")))

            paced(seconds, tick, sample, soak)
            cpu1, io1 = backend_cost(pid)
            soak.remover_cpu, soak.remover_io = cpu1 - cpu0, io1 - io0
            soak.postgres_cpu = (postgres_cpu() or 0.0) - pg0
            soak.inserter_cpu = inserter.cpu()
            soak.autovacuum_cpu = vacuums.total
            soak.notes["partitions dropped"] = counted
            # Rows dropped: all but those left (counted after the CPU readings).
            left = 0
            for table in TABLES:
                row = conn.execute(f"select count(*) from part.{table}").fetchone()
                left += int(row[0]) if row else 0
            soak.removed = soak.inserted - left
            soak.notes["partitions per table"] = len(_partition_bounds(conn, "deliveries"))
            soak.notes["update 200 by id (ms): plain, partitioned"] = by_id_cost(conn)
            inserter.conn.close()
    finally:
        db.drop()
    return soak


def by_id_cost(conn: psycopg.Connection[Any], rounds: int = 200) -> tuple[float, float]:
    """Median time of the hot path's shape of statement, an update of 200
    deliveries by id, on the plain table and on the partitioned one (whose
    primary key needs created_at, which the worker does not have)."""
    conn.execute(
        "insert into outbox.deliveries (event_id, webhook_id, status) "
        "select g, gen_random_uuid(), 'delivered' from generate_series(1, 200000) g"
    )
    conn.execute("analyze outbox.deliveries")
    conn.execute("analyze part.deliveries")
    out = []
    for schema in ("outbox", "part"):
        ids_row = conn.execute(
            f"select array(select id from {schema}.deliveries order by random() limit 200)"
        ).fetchone()
        assert ids_row is not None
        ids = ids_row[0]
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            conn.execute(
                f"update {schema}.deliveries set last_status_code = 200 where id = any(%s)",
                (ids,),
                prepare=True,
            )
            times.append((time.perf_counter() - began) * 1000)
        out.append(round(statistics.median(times), 3))
    return out[0], out[1]


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


# ------------------------------------------------------------------ throughput


def seed_old_history(db: BenchDatabase, events: int, webhooks: list[str], age: str) -> None:
    """Finished history ``age`` old, for the service to remove during a drain."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        row = conn.execute(f"select now() - interval '{age}'").fetchone()
        assert row is not None
        params = {"owner": OWNER, "event": EVENT, "body": BODY, "webhooks": webhooks, "created": row[0]}
        for done in range(0, events, 10_000):
            conn.execute(INSERT.format(schema="outbox"), {**params, "n": min(10_000, events - done)})
        conn.execute("vacuum analyze outbox.events, outbox.deliveries, outbox.delivery_attempts")


def drain_with(
    db: BenchDatabase, recv: Any, events: int, webhooks: int, old: int, retention_setting: str, age: str
) -> dict[str, float]:
    db.execute(
        "truncate outbox.delivery_attempts, outbox.deliveries, outbox.events, outbox.webhooks, "
        "outbox.maintenance_runs restart identity cascade"
    )
    db.execute("update outbox.maintenance_leases set holder = null, expires_at = '-infinity'")
    hooks = []
    for i in range(webhooks):
        rows = db.execute(
            "select id from outbox.create_webhook(%s, %s, array[%s])", (OWNER, f"{recv.url}/hook/{i}", EVENT)
        )
        hooks.append(str(rows[0][0]))
    seed_old_history(db, old, hooks, age)
    db.emit_bulk(events)
    expected = events * webhooks
    recv.reset()
    pg0 = postgres_cpu()
    pool = Workers(db.url, 1, RETENTION=retention_setting)
    try:
        wait_until(lambda: recv.count > 0 or not pool.alive(), 60, "the first delivery")
        wait_until(lambda: recv.count >= expected or not pool.alive(), 600, "all deliveries", 0.005)
        wait_until(lambda: db.outstanding() == 0, 300, "outcomes written", 0.02)
    finally:
        pool.stop()
    pg1 = postgres_cpu()
    removed = db.execute(
        "select coalesce(sum(events), 0), coalesce(sum(deliveries + attempts), 0) "
        "from outbox.maintenance_runs"
    )
    return {
        "rate": expected / max(recv.last - recv.first, 1e-9),
        "pg_cpu_ms": (pg1 - pg0) / expected * 1000 if pg0 and pg1 else float("nan"),
        "removed_events": float(removed[0][0]),
        "removed_rows": float(removed[0][0] + removed[0][1]),
    }


def throughput(server: str, events: int, webhooks: int, old: int, pairs: int, age: str) -> None:
    db = BenchDatabase(server, "rettp")
    got: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        with receiver_mod.start() as recv:
            for pair in range(pairs):
                order = ("off", "on") if pair % 2 == 0 else ("on", "off")
                for mode in order:
                    out = drain_with(db, recv, events, webhooks, old, "1h" if mode == "on" else "off", age)
                    got[mode].append(out)
                    print(f"  pair {pair + 1} retention {mode}: {out['rate']:,.0f} deliveries/s, "
                          f"PostgreSQL {out['pg_cpu_ms']:.3f} ms CPU/delivery, removed "
                          f"{out['removed_events']:,.0f} old events ({out['removed_rows']:,.0f} more rows)",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        db.drop()
    ratios = [on["rate"] / off["rate"] for on, off in zip(got["on"], got["off"], strict=True)]
    print(f"\n## throughput, {events:,} events x {webhooks} webhooks, {old:,} old events to remove")
    for mode in ("off", "on"):
        rates = [r["rate"] for r in got[mode]]
        print(f"retention {mode}: deliveries/s {', '.join(f'{r:,.0f}' for r in rates)}")
    each = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"on/off ratio per pair: {each}; median {statistics.median(ratios):.3f}")


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
