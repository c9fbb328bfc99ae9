"""The web console: operator keys, console sessions, the delivery log by event type, health reads.

Revision ID: 0006
Revises: 0005
"""

from outbox_worker.migrate import run_sql_file

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0006_console.up.sql")


def downgrade() -> None:
    run_sql_file("0006_console.down.sql")
