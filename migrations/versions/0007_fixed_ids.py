"""Ids of the hot tables cannot change; update_webhook locks FOR NO KEY UPDATE.

Revision ID: 0007
Revises: 0006
"""

from outbox_worker.migrate import run_sql_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0007_fixed_ids.up.sql")


def downgrade() -> None:
    run_sql_file("0007_fixed_ids.down.sql")
