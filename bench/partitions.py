"""The partitioned strategy of ``python -m bench.retention``: the history
tables range-partitioned on their creation time, partitions made ahead and
dropped whole once past the window."""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from bench.harness import BenchDatabase, postgres_cpu
from bench.soak import TABLES, AutovacuumCpu, Inserter, Soak, backend_cost, paced, total_size, webhook_ids

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
