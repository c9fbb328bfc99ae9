"""Smoke test of the benchmark suite: its smallest mode produces a table of
numbers. No timing is asserted; figures belong to the benchmark, not CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest


def run_bench(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


def test_bench_quick_prints_a_table(server_url: str, repo_root: Path) -> None:
    result = run_bench(repo_root, "--only", "throughput", "payload", "slow", "--server", server_url)
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(("| throughput", "| payload", "| slow"))
    ]
    assert len(rows) == 16 + 4 + 6, result.stdout
    # two throughput cases, the real-sized payload and the slow one
    assert sum("baseline raw aiohttp" in row for row in rows) == 4
    # the worker's own client beside it, where the worker's ceiling is read
    assert sum("baseline raw pyreqwest" in row for row in rows) == 3
    for row in rows:
        value = row.split("|")[3]
        assert re.search(r"\d", value), row


def test_bench_quick_times_the_console_pages(server_url: str, repo_root: Path) -> None:
    result = run_bench(repo_root, "--only", "console", "--server", server_url)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| console:")]
    assert len(rows) == 10, result.stdout
    assert sum("< 50 ms" in row for row in rows) == 7  # the delivery log's pages
    for row in rows:
        assert re.fullmatch(r" [0-9.]+ / [0-9.]+ *", row.split("|")[3]), row


def test_bench_compare_pairs_this_checkout_with_a_ref(server_url: str, repo_root: Path) -> None:
    result = run_bench(repo_root, "--compare", "HEAD", "--server", server_url)
    prefixes = ("| throughput", "| slow", "| latency")
    rows = [line for line in result.stdout.splitlines() if line.startswith(prefixes)]
    assert len(rows) == 25, result.stdout
    assert sum("this checkout:" in row for row in rows) == 9
    # Rows that judge the pairs: each pair's change and in how many it went
    # the right way (CPU lower; the slow cases' rates higher too).
    changes = [row for row in rows if "against the ref, per pair" in row]
    assert len(changes) == 7
    assert sum(bool(re.search(r"; lower in \d of 1\)", row)) for row in changes) == 5
    assert sum(bool(re.search(r"deliveries/s.*; higher in \d of 1\)", row)) for row in changes) == 2
    for row in rows:
        assert re.search(r"\d", row.split("|")[3]), row
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=repo_root, capture_output=True, text=True)
    assert "outbox-bench-" not in worktrees.stdout  # the ref's worktree is removed


def test_bench_workers_run_the_code_of_the_repo_they_are_given(
    tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--compare` hands Workers a worktree of the ref; started from this
    # checkout, `python -m` used to import this checkout's package instead.
    from bench.harness import run_from

    other = tmp_path / "ref"
    (other / "outbox_worker").mkdir(parents=True)
    (other / "outbox_worker" / "__init__.py").write_text("")
    monkeypatch.chdir(repo_root)
    probe = ["-c", "import outbox_worker; print(outbox_worker.__file__)"]
    proc = run_from(other, probe, os.environ, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert Path(out.decode().strip()).resolve() == (other / "outbox_worker" / "__init__.py").resolve()


def test_bench_drops_only_the_databases_of_dead_bench_runs(server_url: str) -> None:
    import psycopg
    from psycopg import sql

    from bench.harness import drop_stale_databases, postgres_cpu

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f"outbox_bench_tp_{dead.pid}_a1b2c3",
        "alive": f"outbox_bench_tp_{os.getpid()}_a1b2c3",
    }
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in names.values():
            conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        try:
            dropped = drop_stale_databases(server_url)
            left = {r[0] for r in conn.execute("select datname from pg_database")}
            assert names["alive"] in left
            if postgres_cpu() is None:  # a server whose processes we cannot see: pids mean nothing
                assert dropped == [] and names["dead"] in left
            else:
                assert names["dead"] in dropped and names["dead"] not in left
        finally:
            for name in names.values():
                conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="the emit scenario needs PostgreSQL's pgbench")
def test_bench_emit_scripts_write_what_their_rows_say(server_url: str) -> None:
    """Each pgbench script of the emit scenario commits the business rows
    and events its label claims (a script that failed, or emitted nothing,
    would still print a rate)."""
    from bench.emit_cost import BUSINESS_TABLE, EMIT_CASES, PGBENCH_PLAIN, PGBENCH_SECOND_INSERT
    from bench.harness import bench_database

    scripts = {PGBENCH_PLAIN: "plain"} | {script: label for label, _, _, script, _ in EMIT_CASES}
    expected = {PGBENCH_PLAIN: (3, 0), PGBENCH_SECOND_INSERT: (6, 0)}
    with bench_database(server_url, "scripts") as db:
        db.execute(BUSINESS_TABLE)
        for script, label in scripts.items():
            db.execute("truncate bench_orders, outbox.events cascade")
            with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
                f.write(script)
                f.flush()
                subprocess.run(
                    ["pgbench", "-n", "-M", "prepared", "-c", "1", "-t", "3", "-f", f.name, db.url],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
            orders, events = db.execute(
                "select (select count(*) from bench_orders), (select count(*) from outbox.events)"
            )[0]
            emits = "not an emit" not in label and script is not PGBENCH_PLAIN
            assert (orders, events) == expected.get(script, (3, 3 if emits else 0)), label


def test_the_tracing_cost_bench_measures_three_ways(server_url: str, repo_root: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "bench.tracing_cost", "--quick", "--server", server_url],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    rows = {
        row.split("|")[2].strip(): row.split("|")[3].strip()
        for row in result.stdout.splitlines()
        if row.startswith("| tracing cost")
    }
    metrics = ("deliveries/s (ratio to off)", "worker CPU ms/delivery (ratio to off)", "spans exported")
    ways = ("off", "on, 100%", "on, 1%")
    assert set(rows) == {f"{way}: {m}" for way in ways for m in metrics}, result.stdout
    assert rows["off: spans exported"] == "0"
    # Every attempt of the 2,000 deliveries, and the batch spans, reach the sink at 100%.
    assert int(rows["on, 100%: spans exported"].replace(",", "")) >= 2_000
