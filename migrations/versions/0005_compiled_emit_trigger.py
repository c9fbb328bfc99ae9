"""One compiled row trigger validates events and wakes workers (no per-transaction lookup).

Revision ID: 0005
Revises: 0004
"""

from outbox_worker.migrate import run_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0005_compiled_emit_trigger.up.sql")


def downgrade() -> None:
    run_sql_file("0005_compiled_emit_trigger.down.sql")
