"""`outbox-worker demo`, run as a user would: a subprocess, exit code and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg


def run_demo(
    *args: str, database_url: str | None, columns: int = 120
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env["COLUMNS"] = str(columns)
    if database_url:
        env["OUTBOX_DATABASE_URL"] = database_url
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "outbox_worker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return done, time.monotonic() - started


def test_demo_with_embedded_postgres() -> None:
    """Nothing configured: the demo brings its own PostgreSQL and cleans it up."""
    done, seconds = run_demo("demo", "--orders", "4", database_url=None)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "PostgreSQL: embedded (pgserver)" in out
    assert "the rolled-back order ord_rolled_back never arrived" in out
    assert "X-Brutlers-Signature:" in out and "webhook-signature: v1," in out
    assert "select delivery_id, event_type, url, attempt" in out
    assert "OK: demo finished" in out
    assert seconds < 30
    tmp = out.split("PostgreSQL: embedded (pgserver) in ")[1].split()[0]
    assert not os.path.exists(tmp), "the embedded server's directory was not removed"


def test_demo_on_a_configured_server_uses_and_drops_a_throwaway_database(server_url: str) -> None:
    with psycopg.connect(server_url) as conn:
        databases_before = {r[0] for r in conn.execute("select datname from pg_database")}
    done, seconds = run_demo("--json", "demo", "--orders", "5", database_url=server_url)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert result["rolled_back_arrived"] is False
    assert result["events"] == 15  # 5 orders x (created, paid, shipped); the rolled-back one is not there
    by_name = {w["name"]: w for w in result["webhooks"]}
    assert {n: (w["expected"], w["arrived"], w["bad_signatures"]) for n, w in by_name.items()} == {
        "crm": (15, 15, 0),
        "erp": (5, 5, 0),
        "status-board": (10, 10, 0),
    }
    assert by_name["erp"]["requests"] == 15  # flaky: two 503s, then 200, for each message
    assert seconds < 30
    with psycopg.connect(server_url) as conn:
        databases_after = {r[0] for r in conn.execute("select datname from pg_database")}
    leftovers = {d for d in databases_after - databases_before if d.startswith("outbox_demo_")}
    assert not leftovers, f"the demo left {leftovers} behind"


def test_demo_keep_prints_its_commands_whole_and_json_comes_after_the_command(server_url: str) -> None:
    done, _ = run_demo("demo", "--orders", "1", "--json", database_url=server_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"] is True
    kept, _ = run_demo("demo", "--orders", "1", "--keep", database_url=server_url, columns=80)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    lines = kept.stdout.splitlines()
    connect = next(line for line in lines if line.startswith("Connect with: psql "))
    url = connect.split('"')[1]
    with psycopg.connect(url) as conn:  # whole: it connects
        assert conn.execute("select count(*) from outbox.events").fetchone() is not None
    name = url.rsplit("/", 1)[1].split("?")[0]
    assert any(line.startswith("Kept: database ") and f"drop database {name}'" in line for line in lines)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"drop database {name} with (force)")
