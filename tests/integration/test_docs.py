"""The guides in docs/: every SQL block of the DBA guide runs against a migrated database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from outbox_worker import emit, migrate, webhooks

ROOT = Path(__file__).resolve().parents[2]
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sql_statements(markdown: str) -> list[str]:
    statements = []
    for block in SQL_BLOCK.findall(markdown):
        statements += [s.strip() for s in re.split(r";\s*(?:\n|$)", block) if s.strip()]
    return statements


@pytest.fixture(scope="module")
def docs_database(make_database: Any) -> str:
    """A migrated database with a little history: a delivered and a failed delivery."""
    url: str = make_database("outbox_docs")
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        hook = webhooks.create_webhook(conn, "vendor-1", "https://example.com/hook", ["order.*"])
        ids = [
            emit(conn, "vendor-1", "order.created", {"id": "clx1234567890abcdef"}),
            emit(conn, "vendor-1", "order.status_changed", {"id": "clx1234567890abcdef", "status": "PAID"}),
        ]
        conn.execute("update outbox.events set dispatched_at = now(), body = '{}'::bytea")
        for event_id, status, code in zip(ids, ("delivered", "failed"), (200, 500), strict=True):
            delivery = conn.execute(
                "insert into outbox.deliveries (event_id, webhook_id, status, attempts, completed_at, "
                "last_status_code) values (%s, %s, %s, 1, now(), %s) returning id",
                (event_id, hook.id, status, code),
            ).fetchone()
            assert delivery
            conn.execute(
                "insert into outbox.delivery_attempts (delivery_id, attempt, attempted_at, duration_ms, "
                "status_code, error_class, worker_id) values (%s, 1, now(), 12.5, %s, %s, 'docs')",
                (delivery[0], code, None if code == 200 else "http"),
            )
    return url


def test_the_dba_guide_has_the_promised_queries() -> None:
    text = (ROOT / "docs" / "dba.md").read_text()
    statements = sql_statements(text)
    assert len(statements) >= 12
    joined = "\n".join(statements)
    for needle in (
        "data->>'id'",
        "outbox.delivery_log",
        "outbox.replay_failed",
        "percentile_cont",
        "queue_stats",
    ):
        assert needle in joined
    for needle in (
        "purge",
        "OUTBOX_LISTEN=false",
        "OUTBOX_PREPARE_STATEMENTS=false",
        "vacuum",
        "outbox-worker grant",
    ):
        assert needle in text


DBA_STATEMENTS = sql_statements((ROOT / "docs" / "dba.md").read_text())


@pytest.mark.parametrize("statement", DBA_STATEMENTS, ids=[f"sql{i:02d}" for i in range(len(DBA_STATEMENTS))])
def test_every_sql_statement_in_the_dba_guide_runs(docs_database: str, statement: str) -> None:
    # Autocommit, one statement at a time: `create index concurrently` included.
    with psycopg.connect(docs_database, autocommit=True) as conn:
        conn.execute(statement)


def test_the_order_lookup_finds_the_order(docs_database: str) -> None:
    [lookup] = [s for s in sql_statements((ROOT / "docs" / "dba.md").read_text()) if "l.attempt," in s]
    with psycopg.connect(docs_database, autocommit=True) as conn:
        rows = conn.execute(lookup).fetchall()
    assert len(rows) == 2


def test_the_scaling_guide_leaves_room_for_measured_figures() -> None:
    text = (ROOT / "docs" / "scaling.md").read_text()
    assert "Measured figures: see README → Performance" in text
