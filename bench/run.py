"""outbox_worker benchmarks: ``python -m bench [--quick] [--only NAME ...]``.

Every figure is the median of ``--runs`` runs (3; 1 with ``--quick``, which
also shrinks the sizes). Each run measures, in the same run, the **baseline**:
the raw aiohttp client POSTing the same signed bodies to the same receiver,
with no database, the worker's connection limits and its garbage-collector
settings, timed over the same window as the workers (the receiver's first
to last arrival). Ratios to it are what to compare across machines; the
slow-endpoint scenario has one too, at its 1,000 in flight.

Scenarios (``--only``): throughput, payload, keyed, latency, emit, slow, memory, growth,
console (the web console's server time, bench/console.py), multidb (bench/multidb.py),
manydb (bench/manydb.py).
``--compare REF`` instead measures throughput, the slow endpoint and latency
of this checkout against a git ref, in pairs that alternate within the same run (the
machine's speed drifts more between runs than most changes move it).
Needs a PostgreSQL it may create databases on (``--server``, default
``postgresql://postgres@127.0.0.1:5432/postgres``) and ``pgbench`` on PATH for
``emit``. Workers are real ``outbox-worker run`` processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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
from outbox_worker.signing import encode_body, sign_headers

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


# ------------------------------------------------------------------ baseline


def _baseline_child(
    url: str, count: int, limit: int, per_host: int, payload: str | None, result: Any, client: str = "aiohttp"
) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    import aiohttp

    from outbox_worker.signing import load_payload

    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo3ODkwMTI="
    now = time.time()
    from datetime import UTC, datetime

    created = datetime.now(UTC)
    requests = []
    for i in range(count):
        data = load_payload(payload or json.dumps({"id": f"ord_{i}", "total": i % 1000, "currency": "EUR"}))
        body = encode_body(EVENT, data, created)
        headers = sign_headers(
            event_id=i,
            body=body,
            secrets=(secret,),
            timestamp=int(now),
            signature_header="X-Brutlers-Signature",
        )
        headers["Content-Type"] = "application/json"
        requests.append((body, headers))

    # The worker's own collector settings: untuned, collections walking the
    # requests in flight took a third of this client's CPU at 1,000 in flight.
    from outbox_worker.worker import tune_gc

    tune_gc(limit)

    async def with_aiohttp() -> float:
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=per_host)
        async with aiohttp.ClientSession(connector=connector) as session:
            queue = iter(requests)

            async def lane() -> None:
                for body, headers in queue:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()

            proc = psutil.Process()
            cpu0 = sum(proc.cpu_times()[:2])
            await asyncio.gather(*(lane() for _ in range(limit)))
            return float(sum(proc.cpu_times()[:2]) - cpu0)

    async def with_pyreqwest() -> float:
        from pyreqwest.client import ClientBuilder

        async with ClientBuilder().follow_redirects(False).max_connections(limit).build() as http:
            queue = iter(requests)

            async def lane() -> None:
                for body, headers in queue:
                    request = http.post(url).body_bytes(body).headers(headers).build_streamed()
                    async with request as resp:
                        await resp.body_reader.read(4096)

            proc = psutil.Process()
            cpu0 = sum(proc.cpu_times()[:2])  # the process's threads: tokio's included
            await asyncio.gather(*(lane() for _ in range(limit)))
            return float(sum(proc.cpu_times()[:2]) - cpu0)

    cpu = asyncio.run(with_aiohttp() if client == "aiohttp" else with_pyreqwest())
    result.put(cpu / count * 1000)  # the rate is read off the receiver


def baseline(
    recv: receiver_mod.Receiver,
    count: int,
    limit: int = 256,
    per_host: int = 32,
    payload: dict[str, Any] | None = None,
    client: str = "aiohttp",
) -> tuple[float, float]:
    """A raw client (aiohttp, or the worker's pyreqwest), pre-signed bodies,
    no database: (requests/s, CPU ms/request). The rate is read off the
    receiver, first to last arrival, the window ``drain`` measures the
    workers by."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    recv.reset()
    text = json.dumps(payload) if payload is not None else None
    proc = ctx.Process(
        target=_baseline_child, args=(recv.url + "/baseline", count, limit, per_host, text, queue, client)
    )
    proc.start()
    cpu_ms = queue.get(timeout=600)
    proc.join()
    return count / max(recv.last - recv.first, 1e-9), float(cpu_ms)


# ------------------------------------------------------------------ scenarios


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


def scenario_throughput(opts: Options, table: Table) -> float:
    peak_rss = 0.0
    with bench_database(opts.server, "tp") as db, receiver_mod.start() as recv:
        cases = [(opts.size(20_000, 2_000), 1), (opts.size(5_000, 500), 5)]
        for events, webhooks in cases:
            total = events * webhooks
            results: dict[str, list[float]] = {}
            for _ in range(opts.runs):
                base_rate, base_cpu = baseline(recv, total)
                results.setdefault("base", []).append(base_rate)
                results.setdefault("base_cpu", []).append(base_cpu)
                # The worker's own client alone: the ceiling it works under.
                rust_rate, rust_cpu = baseline(recv, total, client="pyreqwest")
                results.setdefault("rust", []).append(rust_rate)
                results.setdefault("rust_cpu", []).append(rust_cpu)
                for workers in (1, 2):
                    out = drain(db, recv, events, webhooks, workers)
                    results.setdefault(f"rate{workers}", []).append(out["rate"])
                    results.setdefault(f"ratio{workers}", []).append(out["rate"] / base_rate)
                    results.setdefault(f"rust_ratio{workers}", []).append(out["rate"] / rust_rate)
                    results.setdefault(f"cpu{workers}", []).append(out["cpu_ms"])
                    results.setdefault(f"main{workers}", []).append(out["main_cpu_ms"])
                    peak_rss = max(peak_rss, out["rss_mb"])
            name = f"throughput {events:,} ev x {webhooks} wh"
            r = {k: median(v) for k, v in results.items()}
            table.add(name, "baseline raw aiohttp (deliveries/s)", f"{r['base']:,.0f}")
            table.add(name, "baseline client CPU ms/request", f"{r['base_cpu']:.3f}")
            table.add(name, "baseline raw pyreqwest (deliveries/s)", f"{r['rust']:,.0f}")
            table.add(name, "baseline pyreqwest CPU ms/request", f"{r['rust_cpu']:.3f}")
            for workers in (1, 2):
                target = ">= 85% of raw aiohttp" if workers == 1 else "> 1 worker"
                table.add(
                    name,
                    f"{workers} worker{'s' if workers > 1 else ''}: deliveries/s (ratio to raw aiohttp; "
                    "to raw pyreqwest)",
                    f"{r[f'rate{workers}']:,.0f} "
                    f"({r[f'ratio{workers}']:.0%}; {r[f'rust_ratio{workers}']:.0%})",
                    target,
                )
                main = r[f"main{workers}"]
                table.add(name, f"{workers} worker{'s' if workers > 1 else ''}: worker CPU ms/delivery "
                          "(main thread + HTTP client thread)",
                          f"{r[f'cpu{workers}']:.3f} ({main:.3f} + {r[f'cpu{workers}'] - main:.3f})",
                          "<= 0.08")  # fmt: skip
    return peak_rss


def scenario_payload(opts: Options, table: Table) -> None:
    """The throughput drain with real-sized events: parsing, encoding,
    storing and signing grow with the payload, the HTTP request barely."""
    events = opts.size(10_000, 1_000)
    size = len(json.dumps(LARGE_PAYLOAD))
    results: dict[str, list[float]] = {}
    with bench_database(opts.server, "payload") as db, receiver_mod.start() as recv:
        for _ in range(opts.runs):
            base_rate, base_cpu = baseline(recv, events, payload=LARGE_PAYLOAD)
            out = drain(db, recv, events, 1, 1, payload=LARGE_PAYLOAD)
            for key, value in (("base", base_rate), ("base_cpu", base_cpu), ("rate", out["rate"]),
                               ("ratio", out["rate"] / base_rate), ("cpu", out["cpu_ms"]),
                               ("pg_cpu", out["pg_cpu_ms"])):  # fmt: skip
                results.setdefault(key, []).append(value)
    r = {k: median(v) for k, v in results.items()}
    name = f"payload {size / 1000:.1f} KB, {events:,} ev x 1 wh"
    table.add(name, "baseline raw aiohttp (deliveries/s)", f"{r['base']:,.0f}")
    table.add(name, "baseline client CPU ms/request", f"{r['base_cpu']:.3f}")
    table.add(name, "1 worker: deliveries/s (ratio to baseline)", f"{r['rate']:,.0f} ({r['ratio']:.0%})")
    table.add(name, "1 worker: worker / PostgreSQL CPU ms/delivery", f"{r['cpu']:.3f} / {r['pg_cpu']:.3f}")


def scenario_keyed(opts: Options, table: Table) -> None:
    """The throughput drain with every event on an ordering key (1,000 keys,
    so each key's deliveries go one at a time), against the same drain
    unkeyed, in alternating runs."""
    events, keys = opts.size(20_000, 2_000), opts.size(1_000, 100)
    results: dict[str, list[float]] = {}
    with bench_database(opts.server, "keyed") as db, receiver_mod.start() as recv:
        for run in range(opts.runs):
            for name, k in sorted((("unkeyed", 0), ("keyed", keys)), reverse=run % 2 == 1):
                out = drain(db, recv, events, 1, 1, keys=k)
                results.setdefault(f"{name}_rate", []).append(out["rate"])
                results.setdefault(f"{name}_cpu", []).append(out["cpu_ms"])
                results.setdefault(f"{name}_pg", []).append(out["pg_cpu_ms"])
    r = {k: median(v) for k, v in results.items()}
    name = f"keyed {events:,} ev over {keys:,} keys x 1 wh"
    for kind in ("unkeyed", "keyed"):
        table.add(name, f"{kind}: deliveries/s", f"{r[f'{kind}_rate']:,.0f}")
        table.add(name, f"{kind}: worker / PostgreSQL CPU ms/delivery",
                  f"{r[f'{kind}_cpu']:.3f} / {r[f'{kind}_pg']:.3f}")  # fmt: skip
    table.add(name, "keyed: ratio to unkeyed", f"{r['keyed_rate'] / r['unkeyed_rate']:.0%}")


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def measure_latency(db: BenchDatabase, recv: receiver_mod.Receiver, rate: int, seconds: int,
                    repo: Path = REPO) -> dict[str, float]:  # fmt: skip
    """One run of ``rate`` events/s for ``seconds`` against one listening worker."""
    db.reset([f"{recv.url}/hook/0"])
    pool = Workers(db.url, 1, repo)
    try:
        with psycopg.connect(db.url, autocommit=True, prepare_threshold=0) as conn:
            emit = "select outbox.emit(%s, %s, %s::jsonb)"
            # Warm-up: the worker is up and listening once this arrives.
            recv.reset()
            deadline = time.monotonic() + 60
            while recv.count == 0:
                conn.execute(emit, (OWNER, EVENT, json.dumps({"t": 0})))
                wait_until(lambda: recv.count > 0, 1, "warm-up", raises=False)
                if time.monotonic() > deadline:
                    raise TimeoutError("worker never delivered")
            time.sleep(0.5)
            recv.reset()
            recv.record_latencies()
            cpu0 = pool.cpu()
            total = rate * seconds
            start = time.perf_counter()
            committed: dict[float, float] = {}
            for i in range(total):
                slot = start + i / rate
                pause = slot - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                sent = time.time()
                payload = json.dumps({"id": f"ord_{i}", "t": sent})
                conn.execute(emit, (OWNER, EVENT, payload))  # autocommit: returns after COMMIT
                committed[sent] = time.time()  # floats survive the JSON round trip exactly
            wait_until(lambda n=total: recv.count >= n, 60, "latency deliveries")  # type: ignore[misc]
            cpu = pool.cpu() - cpu0
            pairs = recv.latencies()
            # From the moment the emitting statement (which commits)
            # returned to the client; "from emit" adds the emit itself.
            latencies = [(got - committed[t]) * 1000 for t, got in pairs if t in committed]
            from_emit = [(got - t) * 1000 for t, got in pairs]
    finally:
        pool.stop()
    result = {f"p{pct}": _percentile(latencies, pct) for pct in (50, 95, 99)}
    result["max"] = max(latencies)
    result["emit_p50"] = _percentile(from_emit, 50)
    result["cpu"] = cpu / total * 1000
    return result


def scenario_latency(opts: Options, table: Table) -> None:
    rate = 200
    seconds = opts.size(20, 5)
    results: dict[str, list[float]] = {}
    with bench_database(opts.server, "lat") as db, receiver_mod.start() as recv:
        for _ in range(opts.runs):
            for key, value in measure_latency(db, recv, rate, seconds).items():
                results.setdefault(key, []).append(value)
    r = {k: median(v) for k, v in results.items()}
    name = f"latency {rate} ev/s x {seconds} s"
    table.add(name, "commit-to-receipt p50 (ms)", f"{r['p50']:.2f}", "< 1.5")
    table.add(name, "commit-to-receipt p95 (ms)", f"{r['p95']:.2f}")
    table.add(name, "commit-to-receipt p99 (ms)", f"{r['p99']:.2f}", "< 10")
    table.add(name, "commit-to-receipt max (ms)", f"{r['max']:.2f}")
    table.add(name, "emit-start-to-receipt p50 (ms, includes the emit+commit)", f"{r['emit_p50']:.2f}")
    table.add(name, "worker CPU ms/delivery (idle-ish load)", f"{r['cpu']:.3f}")


def paired(
    sides: dict[str, Path],
    runs: int,
    measure: Callable[[Path, float], dict[str, float]],
    before_pair: Callable[[], float],
) -> dict[str, dict[str, list[float]]]:
    """``runs`` pairs of ``measure`` over ``sides``, the order alternating
    from one pair to the next; each pair first runs ``before_pair`` (a
    baseline) and passes its result. Per side, per figure, one value a pair."""
    got: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
    for run in range(runs):
        base = before_pair()
        for name, repo in sorted(sides.items(), reverse=run % 2 == 1):
            for key, value in measure(repo, base).items():
                got[name].setdefault(key, []).append(value)
    return got


def medians(got: dict[str, dict[str, list[float]]]) -> list[tuple[str, dict[str, float]]]:
    return [(name, {k: median(v) for k, v in values.items()}) for name, values in got.items()]


def pair_changes(got: dict[str, dict[str, list[float]]], key: str, higher: bool = False) -> str:
    """This checkout against the ref, pair by pair, in ``key`` (a cost, or a
    rate when ``higher``): what to judge a change by on a machine whose speed
    drifts between pairs more than most changes move it."""
    ref, this = (got[name][key] for name in got)  # the ref first, as sides lists them
    changes = [t / r - 1 for r, t in zip(ref, this, strict=True)]
    better = sum(change > 0 if higher else change < 0 for change in changes)
    listed = ", ".join(f"{change:+.1%}" for change in changes)
    way = "higher" if higher else "lower"
    return f"{median(changes):+.1%} ({listed}; {way} in {better} of {len(changes)})"


def changes_row(what: str) -> str:
    return f"this checkout against the ref, per pair: {what}"


# The slow-endpoint scenario's receiver delay (s) and requests in flight,
# shared by its full run and its ``--compare`` pair.
SLOW_DELAY = 0.1
SLOW_IN_FLIGHT = 1000


def compare(opts: Options, ref: str, table: Table) -> None:
    """Paired runs of this checkout and ``ref`` (a git worktree, removed after):
    throughput 20,000 x 1 and 5,000 x 5 (1 worker), the slow endpoint (1,000
    in flight from 1 worker and from 2 x 500) and latency, alternating which
    goes first, medians of ``opts.runs`` pairs."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        other = Path(tmp) / "ref"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(other), ref], cwd=REPO, check=True)
        try:
            sides = {f"{ref} ({sha})": other, "this checkout": REPO}
            with bench_database(opts.server, "cmp") as db, receiver_mod.start() as recv:
                for events, webhooks in ((opts.size(20_000, 2_000), 1), (opts.size(5_000, 500), 5)):

                    def throughput(
                        repo: Path, base: float, ev: int = events, wh: int = webhooks
                    ) -> dict[str, float]:
                        out = drain(db, recv, ev, wh, 1, repo=repo)
                        return {**out, "ratio": out["rate"] / base}

                    def base_rate(n: int = events * webhooks) -> float:
                        return baseline(recv, n)[0]

                    scenario = f"throughput {events:,} ev x {webhooks} wh, 1 worker"
                    got = paired(sides, opts.runs, throughput, base_rate)
                    for name, r in medians(got):
                        table.add(scenario, f"{name}: deliveries/s (ratio to baseline)",
                                  f"{r['rate']:,.0f} ({r['ratio']:.0%})")  # fmt: skip
                        table.add(scenario, f"{name}: worker / PostgreSQL CPU ms per delivery",
                                  f"{r['cpu_ms']:.3f} / {r['pg_cpu_ms']:.3f}")  # fmt: skip
                    table.add(scenario, changes_row("worker CPU per delivery"), pair_changes(got, "cpu_ms"))
            # The slow-endpoint target's own pairs: 1,000 in flight against
            # the 100 ms receiver, from one worker (bound by its core) and
            # from two of 500 (bound by how full their slots stay).
            with bench_database(opts.server, "cmpslow") as db, receiver_mod.start(delay=SLOW_DELAY) as recv:
                slow_events = opts.size(20_000, 2_000)
                ideal = SLOW_IN_FLIGHT / SLOW_DELAY

                def slow(repo: Path, _: float) -> dict[str, float]:
                    figures: dict[str, float] = {}
                    for workers in (1, 2):
                        each = SLOW_IN_FLIGHT // workers
                        out = drain(db, recv, slow_events, 1, workers, repo=repo, concurrency=each,
                                    per_host_concurrency=each, owner_share=1.0)  # fmt: skip
                        figures |= {f"{key}/{workers}": value for key, value in out.items()}
                    return figures

                name_of = f"slow endpoint ({SLOW_DELAY * 1000:.0f} ms), {SLOW_IN_FLIGHT} in flight"
                got = paired(sides, opts.runs, slow, lambda: 0.0)
                for workers, what in ((1, "1 worker"), (2, "2 workers x 500")):
                    scenario = f"{name_of}, {what}"
                    rate, cpu, pg = (f"{key}/{workers}" for key in ("rate", "cpu_ms", "pg_cpu_ms"))
                    for name, r in medians(got):
                        table.add(scenario, f"{name}: deliveries/s (ratio to ideal {ideal:,.0f}/s)",
                                  f"{r[rate]:,.0f} ({r[rate] / ideal:.0%})")  # fmt: skip
                        table.add(scenario, f"{name}: worker / PostgreSQL CPU ms per delivery",
                                  f"{r[cpu]:.3f} / {r[pg]:.3f}")  # fmt: skip
                    table.add(scenario, changes_row("deliveries/s"), pair_changes(got, rate, higher=True))
                    table.add(scenario, changes_row("worker CPU per delivery"), pair_changes(got, cpu))
            with bench_database(opts.server, "cmplat") as db, receiver_mod.start() as recv:
                seconds = opts.size(10, 5)

                def latency(repo: Path, _: float) -> dict[str, float]:
                    return measure_latency(db, recv, 200, seconds, repo)

                scenario = f"latency 200 ev/s x {seconds} s"
                got = paired(sides, opts.runs, latency, lambda: 0.0)
                for name, r in medians(got):
                    table.add(scenario, f"{name}: commit-to-receipt p50 / p99 (ms)",
                              f"{r['p50']:.2f} / {r['p99']:.2f}")  # fmt: skip
                table.add(scenario, changes_row("p50"), pair_changes(got, "p50"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO, check=False)


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


def scenario_slow(opts: Options, table: Table) -> float:
    delay = SLOW_DELAY
    concurrency = SLOW_IN_FLIGHT
    events = opts.size(20_000, 3_000)
    ideal = concurrency / delay
    rates: dict[int, list[float]] = {0: [], 1: [], 2: [], 3: []}
    base_cpu: list[float] = []
    rust_cpu: list[float] = []
    peak = 0.0
    with bench_database(opts.server, "slow") as db, receiver_mod.start(delay=delay) as recv:
        for _ in range(opts.runs):
            # What each HTTP client alone reaches here, with no database: the
            # ceilings a worker built on either works under.
            rate, cpu_ms = baseline(recv, events, limit=concurrency, per_host=concurrency)
            rates[0].append(rate)
            base_cpu.append(cpu_ms)
            rate, cpu_ms = baseline(recv, events, limit=concurrency, per_host=concurrency, client="pyreqwest")
            rates[3].append(rate)
            rust_cpu.append(cpu_ms)
            # The same 1,000 in flight from one process, then split over two.
            for workers in (1, 2):
                each = concurrency // workers
                # One tenant whose one receiver may take every slot: no caps.
                out = drain(db, recv, events, 1, workers, concurrency=each, per_host_concurrency=each,
                            owner_share=1.0)  # fmt: skip
                rates[workers].append(out["rate"])
                peak = max(peak, out["rss_mb"])
    name = f"slow endpoint ({delay * 1000:.0f} ms), {concurrency} in flight"
    base = median(rates[0])
    table.add(
        name,
        f"baseline raw aiohttp: deliveries/s (ratio to ideal {ideal:,.0f}/s)",
        f"{base:,.0f} ({base / ideal:.0%})",
    )
    table.add(name, "baseline client CPU ms/request", f"{median(base_cpu):.3f}")
    rust = median(rates[3])
    table.add(name, "baseline raw pyreqwest: deliveries/s", f"{rust:,.0f} ({rust / ideal:.0%})")
    table.add(name, "baseline pyreqwest CPU ms/request", f"{median(rust_cpu):.3f}")
    for workers, what in ((1, "1 worker"), (2, "2 workers x 500")):
        rate = median(rates[workers])
        table.add(
            name,
            f"{what}: deliveries/s (ratio to ideal {ideal:,.0f}/s; to the raw client)",
            # One decimal: 7,983/s is 79.8%, which a whole percent rounds to the target.
            f"{rate:,.0f} ({rate / ideal:.1%}; {rate / base:.0%})",
            ">= 85%" if workers == 1 else ">= 80%",
        )
    return peak


def scenario_memory(
    opts: Options, table: Table, throughput_rss: float | None, slow_rss: float | None
) -> None:
    if throughput_rss is not None:
        table.add("memory", "worker peak RSS, throughput run (MB)", f"{throughput_rss:.1f}", "< 100")
    if slow_rss is not None:
        table.add("memory", "worker peak RSS, 1,000 slow in flight (MB)", f"{slow_rss:.1f}", "< 100")
    concurrency = 1000
    peaks: list[float] = []
    with bench_database(opts.server, "mem") as db, receiver_mod.start(hang=True) as recv:
        for _ in range(opts.runs):
            db.reset([f"{recv.url}/hook/{i}" for i in range(5)])
            db.emit_bulk(opts.size(2_000, 400))
            recv.reset()
            pool = Workers(db.url, 1, concurrency=concurrency, per_host_concurrency=concurrency,
                           owner_share=1.0, shutdown_grace=0.5)  # fmt: skip
            try:
                wait_until(lambda p=pool: recv.count >= concurrency or not p.alive(), 60, "hung requests")  # type: ignore[misc]
                time.sleep(2)  # steady state with every slot hung
                peaks.append(pool.peak_rss() / 2**20)
            finally:
                pool.stop()
    table.add(
        "memory", f"worker peak RSS, receiver hangs, {concurrency} hung (MB)", f"{median(peaks):.1f}", "< 100"
    )


def scenario_growth(opts: Options, table: Table) -> None:
    """Sustained load with a purge after each round: table sizes stay flat."""
    rounds = opts.size(5, 3)
    per_round = opts.size(10_000, 2_000)
    with bench_database(opts.server, "growth") as db, receiver_mod.start() as recv:
        db.reset([f"{recv.url}/hook/{i}" for i in range(2)])
        pool = Workers(db.url, 1)
        env = {**os.environ, "OUTBOX_DATABASE_URL": db.url}
        sizes: list[int] = []
        try:
            for _ in range(rounds):
                db.emit_bulk(per_round)
                wait_until(lambda: db.outstanding() == 0, 300, "round delivered", 0.05)
                subprocess.run(
                    [sys.executable, "-m", "outbox_worker.cli", "purge", "--older-than", "0s"],
                    env=env, check=True, capture_output=True,
                )  # fmt: skip
                # What autovacuum does on its own schedule, done now so the run is short.
                for relation in ("events", "deliveries", "delivery_attempts"):
                    db.execute(f"vacuum outbox.{relation}")
                sizes.append(sum(db.sizes().values()))
        finally:
            pool.stop()
    table.add(
        f"growth: {rounds} rounds x {per_round:,} ev x 2 wh, purge + vacuum each",
        "outbox tables size after each round (MB)",
        " / ".join(f"{s / 2**20:.1f}" for s in sizes),
        "flat",
    )


def scenario_console(opts: Options, table: Table) -> None:
    """The web console's server time per page at 100,000 deliveries (bench/console.py)."""
    from bench import console

    deliveries = opts.size(100_000, 10_000)
    with bench_database(opts.server, "console") as db:
        figures = console.measure(db, deliveries, runs=opts.size(30, 5))
    for name, (p50, p95) in figures.items():
        target = f"< {console.TARGET_MS:.0f} ms" if name.startswith("delivery log") else ""
        table.add(
            f"console: {name}, {deliveries:,} deliveries",
            "server time per request, p50 / p95 (ms)",
            f"{p50:.1f} / {p95:.1f}",
            target,
        )


def main(
    argv: list[str] | None = None, more: Mapping[str, Callable[[Options, Table], None]] | None = None
) -> int:
    """The bench; ``more``: scenarios of other modules, by name (see bench/__main__.py)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run, small sizes (smoke test)")
    parser.add_argument("--runs", type=int, help="runs per figure (median); default 3, 1 with --quick")
    parser.add_argument(
        "--only", nargs="+", choices=[*SCENARIOS, *(more or {})], help="run only these scenarios"
    )
    parser.add_argument("--server", default=os.environ.get("OUTBOX_BENCH_SERVER", DEFAULT_SERVER))
    parser.add_argument(
        "--compare", metavar="REF", help="paired throughput, slow-endpoint and latency runs against a git ref"
    )
    args = parser.parse_args(argv)
    opts = Options(server=args.server, runs=args.runs or (1 if args.quick else 3), quick=args.quick)
    for name in drop_stale_databases(args.server):
        print(f"dropped {name}, left by a bench run that died", file=sys.stderr)
    if args.compare:
        table = Table()
        started = time.monotonic()
        compare(opts, args.compare, table)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"\noutbox_worker bench --compare {args.compare}: {when}, "
              f"median of {opts.runs} pair(s), {time.monotonic() - started:.0f} s\n")  # fmt: skip
        print(table.render())
        return 0
    chosen = args.only or [*SCENARIOS, *(more or {})]
    table = Table()
    throughput_rss = slow_rss = None
    started = time.monotonic()
    if "throughput" in chosen:
        throughput_rss = scenario_throughput(opts, table)
    if "payload" in chosen:
        scenario_payload(opts, table)
    if "keyed" in chosen:
        scenario_keyed(opts, table)
    if "latency" in chosen:
        scenario_latency(opts, table)
    if "emit" in chosen:
        scenario_emit(opts, table)
    if "slow" in chosen:
        slow_rss = scenario_slow(opts, table)
    if "memory" in chosen:
        scenario_memory(opts, table, throughput_rss, slow_rss)
    if "growth" in chosen:
        scenario_growth(opts, table)
    if "console" in chosen:
        scenario_console(opts, table)
    for name, scenario in (more or {}).items():
        if name in chosen:
            scenario(opts, table)
    cpus = os.cpu_count()
    print(
        f"\noutbox_worker bench: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpus} cores, "
        f"median of {opts.runs} run(s){' (quick)' if opts.quick else ''}, "
        f"{time.monotonic() - started:.0f} s\n"
    )
    print(table.render())
    return 0
