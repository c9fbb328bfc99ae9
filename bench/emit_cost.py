"""What emitting costs the app's transaction (pgbench), with and without a worker draining."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import psycopg

from bench.harness import (
    LARGE_PAYLOAD,
    OWNER,
    BenchDatabase,
    Options,
    Table,
    Workers,
    bench_database,
    median,
    wait_until,
)

PGBENCH_PLAIN = """\\set total random(1, 100000)
begin;
insert into bench_orders (owner_id, total) values ('bench', :total);
commit;
"""
PGBENCH_EMIT = """\\set total random(1, 100000)
begin;
insert into bench_orders (owner_id, total) values ('bench', :total);
select outbox.emit('bench', 'order.created', ('{"id": "ord", "total": ' || :total || '}')::jsonb);
commit;
"""
# The same work with emit in the business statement itself (one round trip less).
PGBENCH_EMIT_FUSED = """\\set total random(1, 100000)
begin;
with o as (insert into bench_orders (owner_id, total) values ('bench', :total) returning id, total)
select outbox.emit('bench', 'order.created', jsonb_build_object('id', o.id, 'total', o.total)) from o;
commit;
"""

# Not an emit: the same transaction with a second business INSERT, the cost
# of any extra statement (its round trip and executor start), for scale.
PGBENCH_SECOND_INSERT = """\\set total random(1, 100000)
begin;
insert into bench_orders (owner_id, total) values ('bench', :total);
insert into bench_orders (owner_id, total) values ('bench', :total);
commit;
"""
# The contract's other way in (SPEC: "or a plain INSERT"), in the business
# statement: no extra round trip and no emit() call, only the row, its
# indexes and the trigger that validates it (and notifies when no worker is busy).
PGBENCH_INSERT_FUSED = """\\set total random(1, 100000)
begin;
with o as (insert into bench_orders (owner_id, total) values ('bench', :total) returning id, total)
insert into outbox.events (owner_id, event_type, data)
select 'bench', 'order.created', jsonb_build_object('id', o.id, 'total', o.total) from o;
commit;
"""
# A real-sized event (LARGE_PAYLOAD, 4.3 KB): compressed in the emitting
# transaction (lz4 where the server has it, else pglz).
PGBENCH_EMIT_LARGE = (
    "\\set total random(1, 100000)\n"
    "begin;\n"
    "insert into bench_orders (owner_id, total) values ('bench', :total);\n"
    f"select outbox.emit('bench', 'order.created', '{json.dumps(LARGE_PAYLOAD)}'::jsonb);\n"
    "commit;\n"
)
# Not an emit: a statement that does nothing, the floor under any separate
# statement in the transaction (one more round trip through the server).
PGBENCH_SELECT_1 = """\\set total random(1, 100000)
begin;
insert into bench_orders (owner_id, total) values ('bench', :total);
select 1;
commit;
"""

BUSINESS_TABLE = (
    "create table bench_orders (id bigint generated always as identity primary key, "
    "owner_id text not null, total int not null, created_at timestamptz not null default now())"
)


class _Drainer:
    """A LISTENing connection that consumes notifications, as a worker would."""

    def __init__(self, url: str) -> None:
        self.stop = threading.Event()
        self.count = 0
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("listen outbox_events")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for _ in self.conn.notifies(timeout=0.2):
                self.count += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()


@contextlib.contextmanager
def _busy_worker(url: str) -> Iterator[None]:
    """What a draining worker holds under quiet NOTIFY, and nothing else."""
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("select pg_try_advisory_lock(1869968482, 2)").fetchone() == (True,)
        yield


def pgbench(db: BenchDatabase, script: str, clients: int, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
        path = f.name
    try:
        out = subprocess.run(
            ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients), "-T", str(seconds),
             "-f", path, db.url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(path)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not match:
        raise RuntimeError(f"cannot read pgbench output:\n{out}")
    return float(match.group(1))


# (label, clients, mode, script, target). Modes: "always" = every emitting
# transaction notifies (no worker busy: the state at low load, and without
# quiet NOTIFY); "quiet" = a worker is busy draining, so emitters skip NOTIFY (the
# state under load); "off" = outbox.config.notify off (poll only), the floor;
# "worker" = quiet NOTIFY with a real worker process dispatching the events
# on the same 2 cores (both scripts measured with it running). The scripts
# that are not an emit say what any statement costs here, for scale.
EMIT_CASES = (
    ("notify always (no worker busy)", 1, "always", PGBENCH_EMIT, ""),
    ("quiet notify (a worker busy)", 1, "quiet", PGBENCH_EMIT, ""),
    ("notify always (no worker busy)", 8, "always", PGBENCH_EMIT, ""),
    ("quiet notify (a worker busy)", 8, "quiet", PGBENCH_EMIT, ">= 80%"),
    ("quiet notify, emit fused into the insert", 8, "quiet", PGBENCH_EMIT_FUSED, ""),
    ("quiet notify, a 4.3 KB payload", 8, "quiet", PGBENCH_EMIT_LARGE, ""),
    (
        "quiet notify, a plain INSERT into outbox.events fused into the insert",
        8,
        "quiet",
        PGBENCH_INSERT_FUSED,
        ">= 80%",
    ),
    ("notify off (config.notify = false: poll only)", 8, "off", PGBENCH_EMIT, ""),
    (
        "not an emit: a second business INSERT (the cost of any extra statement)",
        8,
        "off",
        PGBENCH_SECOND_INSERT,
        "",
    ),
    ("not an emit: select 1 (the floor under any extra statement)", 8, "off", PGBENCH_SELECT_1, ""),
    ("quiet notify, a real worker dispatching", 8, "worker", PGBENCH_EMIT, ""),
)
NOT_AN_EMIT = (PGBENCH_SECOND_INSERT, PGBENCH_SELECT_1)


def _worker_connected(db: BenchDatabase) -> bool:
    rows = db.execute("select count(*) from pg_stat_activity where application_name like 'outbox-worker %'")
    return bool(rows[0][0])


def scenario_emit(opts: Options, table: Table) -> None:
    seconds = opts.size(5, 2)
    results: dict[int, list[tuple[float, float]]] = {}
    notifications: dict[int, list[float]] = {}  # per emitting transaction
    with bench_database(opts.server, "emit") as db:
        db.execute(BUSINESS_TABLE)
        # A subscriber to another type: the real worker dispatches (claims,
        # encodes, marks) every event but sends nothing.
        db.execute(
            "select outbox.create_webhook(%s, %s, array[%s])",
            (OWNER, "http://127.0.0.1:9/x", "customer.created"),
        )
        drainer = _Drainer(db.url)
        try:
            for _ in range(opts.runs):
                for index, (_, clients, mode, script, _) in enumerate(EMIT_CASES):
                    db.execute("update outbox.config set notify = %s", (mode != "off",))
                    with contextlib.ExitStack() as stack:
                        if mode == "quiet":
                            stack.enter_context(_busy_worker(db.url))
                        if mode == "worker":
                            workers = Workers(db.url, 1)
                            stack.callback(workers.stop)
                            wait_until(lambda: _worker_connected(db), 30, "worker connected")
                        pair = []
                        for body in (PGBENCH_PLAIN, script):
                            db.execute("truncate bench_orders, outbox.events cascade")
                            db.execute("checkpoint")
                            notified = drainer.count
                            pair.append(pgbench(db, body, clients, seconds))
                        time.sleep(0.3)  # the drainer's last notifications
                        per_tx = (drainer.count - notified) / (pair[1] * seconds)
                    results.setdefault(index, []).append((pair[0], pair[1]))
                    notifications.setdefault(index, []).append(per_tx)
        finally:
            drainer.close()
            db.execute("update outbox.config set notify = true")
    for index, (label, clients, _, script, target) in enumerate(EMIT_CASES):
        pairs = results[index]
        plain = median([p for p, _ in pairs])
        emitting = median([e for _, e in pairs])
        ratio = median([e / p for p, e in pairs])
        table.add(
            f"emit overhead, {clients} client{'s' if clients > 1 else ''}",
            f"{label}: tx/s without / with {'it' if script in NOT_AN_EMIT else 'emit'} (ratio)",
            f"{plain:,.0f} / {emitting:,.0f} ({ratio:.0%})",
            target,
        )
    worker_case = len(EMIT_CASES) - 1
    table.add(
        "emit overhead, 8 clients",
        "quiet notify, a real worker dispatching: notifications per emitting tx",
        f"{median(notifications[worker_case]):.3f}",
    )
