"""Commit-to-receipt latency at a steady emit rate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from bench import receiver as receiver_mod
from bench.harness import (
    EVENT,
    OWNER,
    REPO,
    BenchDatabase,
    Options,
    Table,
    Workers,
    bench_database,
    median,
    wait_until,
)


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
