"""lz4 for outbox.events.data and .body where the server has it.

Revision ID: 0008
Revises: 0007
"""

from outbox_worker.migrate import run_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0008_lz4_payloads.up.sql")


def downgrade() -> None:
    run_sql_file("0008_lz4_payloads.down.sql")
