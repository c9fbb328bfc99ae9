"""Chaos run: prove that nothing committed is lost while everything around it fails.

    python bench/chaos.py                      # the documented large run
    python bench/chaos.py --workers 2 --events 300 --webhooks 2 --kill-every 1   # the CI-sized run

It starts a throwaway PostgreSQL it owns (embedded pgserver), a real HTTP
receiver on loopback that fails a fraction of requests (HTTP 500, connection
resets, hangs past the worker's timeout) and records every request by
``webhook-id``, and N ``outbox-worker run`` processes. It emits events at a
steady rate while it SIGKILLs a random worker every few seconds (restarting
it) and restarts Postgres once mid-run. Then it reconciles, from the
receiver's records and the database:

- every committed (event, webhook) pair is either delivered (the receiver
  answered 2xx at least once) or ``failed`` after 4 logged attempts that the
  receiver really failed;
- no delivery is left pending or leased, no event undispatched;
- no orphan: a delivery without its event or webhook, an attempt without
  its delivery (the ``orphans`` query; no foreign key forbids them);
- duplicates (extra 2xx receipts) are counted; they come only from kills;
- with ``--keys N``, events carry one of N ordering keys, and each (webhook,
  key)'s first 2xx receipts must come in emit order.

Prints one table and exits 1 on any loss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from rich.console import Console
from rich.table import Table

from outbox_worker import embedded, migrate, webhooks
from outbox_worker.loopback import serve_on_loopback
from outbox_worker.sql import query

console = Console(stderr=True)
REQUEST_TIMEOUT = 1.0


@dataclass
class Faults:
    rate: float
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    ok: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    # (path, ordering key) -> event numbers in the order of their first 2xx
    firsts: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = (request.path, request.headers.get("webhook-id", "?"))
        roll = self.rng.random()
        if roll < self.rate / 3:
            self.failed[key] += 1
            self.kinds["500"] += 1
            return web.Response(status=500, text="chaos")
        if roll < 2 * self.rate / 3:
            self.failed[key] += 1
            self.kinds["reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("chaos reset")
        if roll < self.rate:
            self.failed[key] += 1
            self.kinds["hang"] += 1
            await asyncio.sleep(REQUEST_TIMEOUT * 2)
            return web.Response(status=504, text="too late")
        if self.ok[key] == 0 and b'"key"' in body:
            data = json.loads(body)["data"]
            self.firsts.setdefault((request.path, data["key"]), []).append(data["n"])
        self.ok[key] += 1
        return web.Response(text="ok")


class Workers:
    def __init__(self, url: str, count: int, env: dict[str, str]) -> None:
        self.url = url
        self.env = env
        self.generation = 0
        self.ids: list[str] = [""] * count
        self.procs: list[subprocess.Popen[bytes]] = [self._spawn(i) for i in range(count)]
        self.kills = 0

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        self.generation += 1
        self.ids[slot] = f"chaos-{slot}-{self.generation}"
        env = {**os.environ, **self.env, "OUTBOX_DATABASE_URL": self.url,
               "OUTBOX_WORKER_ID": self.ids[slot]}  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-m", "outbox_worker.cli", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_one(self, rng: random.Random) -> None:
        slot = rng.randrange(len(self.procs))
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait()
        self.kills += 1
        self.procs[slot] = self._spawn(slot)

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until every worker is connected, so its SIGTERM handler is set: a
        worker still importing when SIGTERM came died of it (exit -15), and
        on a loaded machine the import alone took 2.5 s."""
        names = [f"outbox-worker {worker_id}"[:63] for worker_id in self.ids]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.OperationalError), psycopg.connect(self.url) as conn:
                rows = conn.execute(
                    "select count(distinct application_name) from pg_stat_activity"
                    " where application_name = any(%s)",
                    (names,),
                ).fetchone()
                if rows is not None and rows[0] == len(names):
                    return
            time.sleep(0.1)

    def stop(self) -> list[int | None]:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        return [proc.wait(60) for proc in self.procs]


async def emit_events(
    url: str, owner: str, total: int, rate: float, progress: dict[str, int], keys: int = 0
) -> None:
    """Emit ``total`` events in transactions of 50 at about ``rate`` per second,
    riding out the Postgres restart (an unknown commit outcome is fine: the
    database, not this counter, says what was committed)."""
    batch = 50
    sent = 0
    started = time.monotonic()
    conn: psycopg.AsyncConnection[Any] | None = None
    while sent < total:
        n = min(batch, total - sent)
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(url)
            if keys:
                await conn.execute(
                    "insert into outbox.events (owner_id, event_type, data, ordering_key) "
                    "select %s, 'order.created', jsonb_build_object('n', %s::int + g, "
                    "'key', 'k' || ((%s::int + g) %% %s)), 'k' || ((%s::int + g) %% %s) "
                    "from generate_series(1, %s) g",
                    (owner, sent, sent, keys, sent, keys, n),
                )
            else:
                await conn.execute(
                    "select outbox.emit(%s, 'order.created', jsonb_build_object('n', %s::int + g)) "
                    "from generate_series(1, %s) g",
                    (owner, sent, n),
                )
            await conn.commit()
            sent += n
            progress["emitted"] = sent
        except psycopg.OperationalError:
            conn = None
            await asyncio.sleep(0.2)
            continue
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    if conn is not None:
        await conn.close()


def queue_state(url: str) -> tuple[int, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select (select count(*) from outbox.events where dispatched_at is null),"
            "       (select count(*) from outbox.deliveries where status = 'pending'),"
            "       (select count(*) from outbox.deliveries where leased_by is not null)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def reconcile(url: str, faults: Faults, kills: int) -> tuple[Table, int]:
    with psycopg.connect(url) as conn:
        events = [
            r[0] for r in conn.execute("select id from outbox.events where event_type = 'order.created'")
        ]
        hooks: dict[Any, str] = {r[0]: r[1] for r in conn.execute("select id, url from outbox.webhooks")}
        rows = conn.execute(
            "select d.event_id, d.webhook_id, d.status::text, "
            "       (select count(*) from outbox.delivery_attempts a where a.delivery_id = d.id) "
            "  from outbox.deliveries d"
        ).fetchall()
        # Deliveries without event, without webhook, attempts without delivery.
        found = conn.execute(query("orphans")).fetchone()
    assert found is not None
    orphans = [int(n) for n in found]
    deliveries = {(e, w): (s, int(logged)) for e, w, s, logged in rows}
    path_of = {w: u.rsplit("/", 1)[-1] for w, u in hooks.items()}
    lost: list[str] = []
    counts: Counter[str] = Counter()
    for event_id in events:
        for webhook_id, path in path_of.items():
            key = ("/" + path, f"evt_{event_id}")
            state = deliveries.get((event_id, webhook_id))
            if state is None:
                lost.append(f"no delivery for event {event_id} x {path}")
                continue
            status, n_logged = state
            counts[status] += 1
            if status == "delivered" and faults.ok[key] == 0:
                lost.append(f"event {event_id} x {path}: marked delivered, never received")
            elif status == "failed":
                if n_logged < 4 or faults.failed[key] < 4:
                    lost.append(f"event {event_id} x {path}: failed after {n_logged} logged attempts")
            elif status == "pending":
                lost.append(f"event {event_id} x {path}: still pending")
    for (path, ordering_key), order in faults.firsts.items():
        if order != sorted(order):
            lost.append(f"{path} key {ordering_key}: first receipts out of emit order")
    pairs = len(events) * len(path_of)
    duplicates = sum(max(0, n - 1) for n in faults.ok.values())
    undispatched, pending, leased = queue_state(url)
    table = Table(title="Chaos run")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for label, value in [
        ("committed events", len(events)),
        ("webhooks", len(path_of)),
        ("(event, webhook) pairs", pairs),
        ("delivered", counts["delivered"]),
        ("failed after 4 real failures", counts["failed"]),
        ("worker SIGKILLs", kills),
        ("Postgres restarts", 1),
        (
            "receiver faults 500 / reset / hang",
            f"{faults.kinds['500']} / {faults.kinds['reset']} / {faults.kinds['hang']}",
        ),
        ("duplicates (extra 2xx receipts)", duplicates),
        ("ordering keys checked (webhook x key)", len(faults.firsts)),
        ("left pending / leased / undispatched", f"{pending} / {leased} / {undispatched}"),
        ("orphans: deliveries w/o event / w/o webhook / attempts", " / ".join(map(str, orphans))),
        ("LOST", len(lost)),
    ]:
        table.add_row(label, str(value))
    for line in lost[:20]:
        console.print(f"[red]lost:[/red] {line}")
    return table, len(lost) + pending + leased + undispatched + sum(orphans)


async def main(args: argparse.Namespace) -> int:
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # the resets are on purpose
    tmp = Path(tempfile.mkdtemp(prefix="outbox-chaos-"))
    url, server = embedded.start(tmp / "pg")
    workers: Workers | None = None
    runner: web.AppRunner | None = None
    try:
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("update outbox.config set allow_http = true, allow_private_networks = true")
        faults = Faults(rate=args.fail_rate)
        app = web.Application()
        app.router.add_post("/{tail:.*}", faults.handle)
        runner, base_url = await serve_on_loopback(app, handler_cancellation=True)
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(args.webhooks):
                webhooks.create_webhook(conn, "chaos", f"{base_url}/w{i}", ["order.created"])
        env = {
            "OUTBOX_ALLOW_HTTP": "true",
            "OUTBOX_ALLOW_PRIVATE_NETWORKS": "true",
            "OUTBOX_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
            "OUTBOX_CONNECT_TIMEOUT": "1",
            "OUTBOX_LEASE_SECONDS": "3",
            "OUTBOX_RETRY_SCHEDULE": "[0.2, 0.5, 1.0]",
            "OUTBOX_POLL_INTERVAL": "0.2",
            "OUTBOX_SHUTDOWN_GRACE": "2",
            "OUTBOX_LOG_LEVEL": "error",
            "OUTBOX_METRICS_PORT": "0",  # many workers on one host
        }
        workers = Workers(url, args.workers, env)
        rng = random.Random(11)
        progress = {"emitted": 0}
        emitter = asyncio.create_task(emit_events(url, "chaos", args.events, args.rate, progress, args.keys))
        restarted = False
        started = time.monotonic()
        next_kill = started + args.kill_every
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if now >= next_kill:
                workers.kill_one(rng)
                next_kill = now + args.kill_every
            if not restarted and progress["emitted"] >= args.events // 2:
                console.print("restarting Postgres")
                await asyncio.to_thread(embedded.restart, server)
                restarted = True
            if emitter.done():
                emitter.result()
                try:
                    undispatched, pending, _ = await asyncio.to_thread(queue_state, url)
                except psycopg.OperationalError:
                    continue
                if undispatched == 0 and pending == 0 and workers.kills >= args.min_kills:
                    break
                if now - started > args.timeout:
                    console.print("[red]timed out waiting for the queue to drain[/red]")
                    break
        await asyncio.to_thread(workers.wait_started)
        codes = workers.stop()
        elapsed = time.monotonic() - started
        table, lost = reconcile(url, faults, workers.kills)
        table.add_row("worker exit codes at SIGTERM", " ".join(str(c) for c in codes))
        table.add_row("wall time (s)", f"{elapsed:.1f}")
        Console().print(table)
        return 1 if lost or any(codes) else 0
    finally:
        if workers is not None:
            for proc in workers.procs:
                if proc.poll() is None:
                    proc.kill()
        if runner is not None:
            await runner.cleanup()
        server.cleanup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--webhooks", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="events emitted per second")
    parser.add_argument("--kill-every", type=float, default=2.0, help="seconds between SIGKILLs")
    parser.add_argument("--min-kills", type=int, default=0, help="keep killing until at least this many")
    parser.add_argument(
        "--fail-rate", type=float, default=0.1, help="fraction of requests the receiver fails"
    )
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keys", type=int, default=0, help="spread events over this many ordering keys")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
