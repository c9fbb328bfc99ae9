"""W3C trace context on events: a traceparent column, emit(..., traceparent => ...).

Revision ID: 0006_tracing
Revises: 0005
"""

from outbox_worker.migrate import run_sql_file

revision = "0006_tracing"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0006_tracing.up.sql")


def downgrade() -> None:
    run_sql_file("0006_tracing.down.sql")
