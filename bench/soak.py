"""What both retention soaks share (``python -m bench.retention``): finished
history inserted at a steady rate, sizes, and the CPU of single backends."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg

from bench.harness import EVENT, OWNER

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
