"""The real worker under retention (``python -m bench.retention
--throughput`` and ``--worker-soak``): drains with retention on and off, in
alternating pairs, old history seeded for the service to remove all along;
and a steady load through one worker, its tables' size over time."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import psycopg

from bench import receiver as receiver_mod
from bench.harness import EVENT, OWNER, BenchDatabase, Workers, postgres_cpu, wait_until
from bench.soak import BODY, INSERT, Vacuumer, total_size


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
    db.execute("update outbox.maintenance_leases set holder = null, expires_at = null")
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


def worker_soak(server: str, rate: int, webhooks: int, window: float, seconds: float, naptime: float) -> None:
    """One real worker with ``OUTBOX_RETENTION`` set to the window, fed by
    ``outbox.emit`` at ``rate`` events/s (in tenths of a second) to
    ``webhooks`` webhooks on the bench receiver: the outbox tables' size
    over time, and whether every delivery arrived at the emitted rate."""
    db = BenchDatabase(server, "retsoak")
    sizes: list[tuple[float, int]] = []
    try:
        with receiver_mod.start() as recv, psycopg.connect(db.url, autocommit=True) as conn:
            for i in range(webhooks):
                conn.execute(
                    "select outbox.create_webhook(%s, %s, array[%s])", (OWNER, f"{recv.url}/hook/{i}", EVENT)
                )
            vacuumer = Vacuumer(db.url, "outbox", naptime) if naptime else None
            pool = Workers(db.url, 1, RETENTION=f"{window:g}s")
            emitted = 0
            try:
                started = time.monotonic()
                next_sample = 0.0
                while (elapsed := time.monotonic() - started) < seconds:
                    conn.execute(
                        "select outbox.emit(%s, %s, jsonb_build_object('n', g)) "
                        "from generate_series(1, cast(%s as integer)) g",
                        (OWNER, EVENT, rate // 10),
                    )
                    emitted += rate // 10
                    if vacuumer:
                        vacuumer.tick()
                    if elapsed >= next_sample:
                        next_sample += 10.0
                        sizes.append((elapsed, total_size(conn, "outbox")))
                    time.sleep(max(0.0, started + emitted / rate - time.monotonic()))
                span = time.monotonic() - started
                wait_until(lambda: recv.count >= emitted * webhooks, 120, "every delivery", 0.05)
                arrived = recv.count
                if not pool.alive():
                    raise RuntimeError("the worker died")
            finally:
                pool.stop()
            runs = conn.execute(
                "select count(*), coalesce(sum(events), 0), coalesce(sum(deliveries), 0), "
                "coalesce(sum(attempts), 0), count(distinct holder) from outbox.maintenance_runs"
            ).fetchone()
    finally:
        db.drop()
    print(
        f"\n## a real worker, {rate:,} events/s x {webhooks} webhooks, retention {window:g} s, {seconds:g} s"
    )
    print("outbox tables MB: " + ", ".join(f"{at:.0f}s {size / 2**20:.1f}" for at, size in sizes))
    print(f"emitted {emitted:,} events in {span:.1f} s ({emitted / span:,.0f}/s); "
          f"{arrived:,} of {emitted * webhooks:,} deliveries arrived")  # fmt: skip
    print(f"retention passes, events, deliveries, attempts removed, holders: {runs}")
