"""W3C trace context on events: a traceparent column, emit(..., traceparent => ...).

Revision ID: 0007
Revises: 0006
"""

from outbox_worker.migrate import run_sql_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0007_tracing.up.sql")


def downgrade() -> None:
    run_sql_file("0007_tracing.down.sql")
