"""``--compare REF``: this checkout against a git ref, in alternating pairs."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench import receiver as receiver_mod
from bench.baseline import baseline
from bench.harness import REPO, SLOW_DELAY, SLOW_IN_FLIGHT, Options, Table, bench_database, drain, median
from bench.latency import measure_latency


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
