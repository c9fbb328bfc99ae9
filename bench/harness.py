"""The bench's harness: its databases, worker processes, results table and
the drain every delivery scenario runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from bench import receiver as receiver_mod
from outbox_worker import migrate
from outbox_worker.db import as_url

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
SCENARIOS = ("throughput", "payload", "keyed", "latency", "emit", "slow", "memory", "growth", "console")
OWNER = "bench"
EVENT = "order.created"

# What real events look like (an order in the shape of Stripe's objects,
# 4.3 KB as JSON, integer amounts and a few floats), for the payload
# scenario; the others send ~60-byte payloads.
_LINE_ITEM = {
    "object": "line_item", "amount": 1999, "currency": "eur", "description": "Blue running shoes, size 42",
    "price": {"id": "price_1", "unit_amount": 1999, "unit_amount_decimal": "1999", "tax_rate": 0.22,
              "product": "prod_1"},
    "quantity": 1, "discounts": [], "metadata": {"sku": "SHOE-BLUE-42", "warehouse": "MIL-3"},
}  # fmt: skip
LARGE_PAYLOAD = {
    "id": "ord_1", "object": "order", "amount_total": 5997, "amount_subtotal": 4915.57, "currency": "eur",
    "customer": {"id": "cus_1", "email": "anna.rossi@example.com", "name": "Anna Rossi",
                 "address": {"line1": "Via Roma 1", "city": "Milano", "postal_code": "20121",
                             "country": "IT"}},
    "line_items": [{"id": f"li_{i}", **_LINE_ITEM} for i in range(12)], "status": "paid", "livemode": False,
}  # fmt: skip
REPO = Path(__file__).resolve().parent.parent


# The slow-endpoint scenario's receiver delay (s) and requests in flight,
# shared by its full run and its ``--compare`` pair.
SLOW_DELAY = 0.1
SLOW_IN_FLIGHT = 1000

# ------------------------------------------------------------------ results


@dataclass
class Table:
    """Rows of (scenario, metric, value, unit, target, verdict); values are medians."""

    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def add(self, scenario: str, metric: str, value: str, target: str = "") -> None:
        self.rows.append((scenario, metric, value, target, ""))
        print(f"  {scenario} | {metric} | {value} | {target}", file=sys.stderr, flush=True)

    def render(self) -> str:
        header = ("scenario", "metric", "median", "target")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(4)]
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + " |")
        return "\n".join(lines)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ------------------------------------------------------------------ database


class BenchDatabase:
    """A migrated database of its own, dropped at exit."""

    def __init__(self, server: str, tag: str) -> None:
        self.server = server
        self.name = f"outbox_bench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(self.name)))
        self.url = as_url(server, dbname=self.name)
        migrate.upgrade(self.url)
        self.execute("update outbox.config set allow_http = true, allow_private_networks = true")

    def execute(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def reset(self, webhook_urls: list[str]) -> None:
        self.execute(
            "truncate outbox.delivery_attempts, outbox.deliveries, outbox.events, outbox.webhooks "
            "restart identity cascade"
        )
        for url in webhook_urls:
            self.execute("select outbox.create_webhook(%s, %s, array[%s])", (OWNER, url, EVENT))

    def emit_bulk(
        self, count: int, payload: dict[str, Any] | None = None, keys: int = 0, traced: bool = False
    ) -> None:
        """Pre-emit ``count`` events (in chunks, so the validate trigger runs
        as for an app): small numbered orders, or ``payload`` each time;
        with ``keys``, spread round-robin over that many ordering keys; with
        ``traced``, each with a sampled trace context of its own."""
        done = 0
        while done < count:
            chunk = min(10_000, count - done)
            if payload is None:
                self.execute(
                    "insert into outbox.events (owner_id, event_type, data, ordering_key, traceparent) "
                    "select %s, %s, "
                    "jsonb_build_object('id', 'ord_' || g, 'total', g %% 1000, 'currency', 'EUR'), "
                    "case when %s > 0 then 'key_' || (g %% greatest(%s, 1)) end, "
                    "case when %s then '00-' || md5('t' || g) || '-' || left(md5('s' || g), 16) || '-01' end "
                    "from generate_series(1, %s) g",
                    (OWNER, EVENT, keys, keys, traced, chunk),
                )
            else:
                self.execute(
                    "insert into outbox.events (owner_id, event_type, data) "
                    "select %s, %s, cast(%s as jsonb) from generate_series(1, %s)",
                    (OWNER, EVENT, json.dumps(payload), chunk),
                )
            done += chunk
        self.execute("analyze outbox.events")

    def outstanding(self) -> int:
        """Events not fanned out plus deliveries not finished."""
        rows = self.execute(
            "select (select count(*) from outbox.events where dispatched_at is null)"
            " + (select count(*) from outbox.deliveries where status = 'pending')"
        )
        return int(rows[0][0])

    def sizes(self) -> dict[str, int]:
        rows = self.execute(
            "select c.relname, pg_total_relation_size(c.oid) from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = 'outbox' and c.relname in ('events', 'deliveries', 'delivery_attempts')"
        )
        return {name: int(size) for name, size in rows}

    def drop(self) -> None:
        with psycopg.connect(self.server, autocommit=True) as conn:
            _drop_database(conn, self.name)


def _drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


_BENCH_DB = re.compile(r"outbox_bench_[a-z]+_(\d+)_[0-9a-f]{6}")


def drop_stale_databases(server: str) -> list[str]:
    """Drop the databases of bench processes that died without dropping
    them (killed runs). Left behind they are not idle: autovacuum works on
    them, and that CPU lands in ``postgres_cpu()``, which sums every
    PostgreSQL process: the likely cause of the server CPU per delivery
    doubling in about a third of the drains on 2026-12-02, which stopped
    once four were dropped. Only on a
    local server: the pid in a name means nothing to another machine."""
    if postgres_cpu() is None:
        return []
    with psycopg.connect(server, autocommit=True) as conn:
        rows = conn.execute("select datname from pg_database where datname like 'outbox_bench_%'").fetchall()
        stale = [
            name
            for (name,) in rows
            if (m := _BENCH_DB.fullmatch(name)) and not psutil.pid_exists(int(m.group(1)))
        ]
        for name in stale:
            _drop_database(conn, name)
    return stale


@contextlib.contextmanager
def bench_database(server: str, tag: str) -> Iterator[BenchDatabase]:
    database = BenchDatabase(server, tag)
    try:
        yield database
    finally:
        database.drop()


# ------------------------------------------------------------------ workers


WORKER_ENV = {
    "OUTBOX_ALLOW_HTTP": "true",
    "OUTBOX_ALLOW_PRIVATE_NETWORKS": "true",
    "OUTBOX_LOG_FORMAT": "json",
    "OUTBOX_LOG_LEVEL": "warning",
    "OUTBOX_METRICS_PORT": "0",  # several workers on one host
}


def run_from(repo: Path, args: list[str], env: Mapping[str, str], **popen: Any) -> subprocess.Popen[bytes]:
    """``python *args`` importing ``outbox_worker`` from ``repo``.

    It runs in ``repo``: ``python -m`` and ``-c`` put the working directory
    first on ``sys.path``, ahead of ``PYTHONPATH``, so a process started from
    this checkout ran this checkout's code whatever ``PYTHONPATH`` said. Until
    2026-12-02 that made ``--compare`` pair this checkout with itself.
    """
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, *args], env=env, cwd=repo, **popen)


class Workers:
    """``outbox-worker run`` processes (of the code in ``repo``), with their CPU time and peak RSS."""

    def __init__(
        self,
        url: str,
        count: int,
        repo: Path = REPO,
        extra_env: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        for i in range(count):
            env = {**os.environ, **WORKER_ENV, **(extra_env or {})}
            env.update(OUTBOX_DATABASE_URL=url, OUTBOX_WORKER_ID=f"bench-{i}")
            for key, value in settings.items():
                env[f"OUTBOX_{key.upper()}"] = str(value)
            self.processes.append(
                run_from(
                    repo,
                    ["-m", "outbox_worker.cli", "run"],
                    env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.ps = [psutil.Process(p.pid) for p in self.processes]

    def cpu(self) -> float:
        """User + system CPU seconds of all workers so far."""
        total = 0.0
        for proc in self.ps:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def main_thread_cpu(self) -> float:
        """CPU seconds of the workers' main threads (Python, asyncio) so far;
        the rest of :meth:`cpu` is the HTTP client's runtime thread."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for proc in self.processes:
            with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/task/{proc.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def peak_rss(self) -> int:
        """Largest peak RSS (VmHWM) among the workers, in bytes."""
        peak = 0
        for proc in self.processes:
            with contextlib.suppress(OSError), open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        return peak

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self, hard: bool = False) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01, raises: bool = True
) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if not raises:
                return False
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
    return True


# ------------------------------------------------------------------ the drain


@dataclass
class Options:
    server: str
    runs: int
    quick: bool

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def drain(
    db: BenchDatabase,
    recv: receiver_mod.Receiver,
    events: int,
    webhooks: int,
    workers: int,
    timeout: float = 300,
    repo: Path = REPO,
    payload: dict[str, Any] | None = None,
    keys: int = 0,
    extra_env: Mapping[str, str] | None = None,
    traced: bool = False,
    **settings: Any,
) -> dict[str, float]:
    """Pre-emit, then let ``workers`` processes drain: rate, CPU ms/delivery
    of the workers and (when the server is local) of PostgreSQL, peak RSS."""
    db.reset([f"{recv.url}/hook/{i}" for i in range(webhooks)])
    db.emit_bulk(events, payload, keys, traced)
    expected = events * webhooks
    recv.reset()
    pg_start = postgres_cpu()
    pool = Workers(db.url, workers, repo, extra_env, **settings)
    try:
        wait_until(lambda: recv.count > 0 or not pool.alive(), 60, "the first delivery")
        cpu_start, main_start = pool.cpu(), pool.main_thread_cpu()
        wait_until(lambda: recv.count >= expected or not pool.alive(), timeout, "all deliveries", 0.005)
        wait_until(lambda: db.outstanding() == 0, timeout, "outcomes written", 0.02)
        cpu = pool.cpu() - cpu_start
        main = pool.main_thread_cpu() - main_start
        rss = pool.peak_rss()
        if not pool.alive():
            raise RuntimeError("a worker died")
    finally:
        pool.stop()
    pg_end = postgres_cpu()
    return {
        "rate": expected / max(recv.last - recv.first, 1e-9),
        "cpu_ms": cpu / expected * 1000,
        "main_cpu_ms": main / expected * 1000,
        "pg_cpu_ms": (pg_end - pg_start) / expected * 1000 if pg_start and pg_end else float("nan"),
        "rss_mb": rss / 2**20,
    }


def postgres_cpu() -> float | None:
    """CPU seconds of the local PostgreSQL server so far (backends that have
    exited count through the postmaster's children times); None when no
    PostgreSQL process is visible (a remote server). Includes the bench's own
    emit and polling queries, which are small next to a drain."""
    total = 0.0
    found = False
    for proc in psutil.process_iter(["name", "ppid"]):
        if proc.info["name"] != "postgres":
            continue
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
            found = True
            parent = psutil.Process(proc.info["ppid"]) if proc.info["ppid"] else None
            if parent is None or parent.name() != "postgres":  # the postmaster
                total += times.children_user + times.children_system
    return total if found else None
