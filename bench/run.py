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
import os
import sys
import time
from collections.abc import Callable, Mapping

from bench.compare import compare
from bench.delivery import (
    scenario_growth,
    scenario_keyed,
    scenario_memory,
    scenario_payload,
    scenario_slow,
    scenario_throughput,
)
from bench.emit_cost import scenario_emit
from bench.harness import DEFAULT_SERVER, SCENARIOS, Options, Table, bench_database, drop_stale_databases
from bench.latency import scenario_latency


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
