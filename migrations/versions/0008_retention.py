"""Retention run by the workers: a lease row electing one purger, a log of passes.

Revision ID: 0008
Revises: 0007
"""

from outbox_worker.migrate import run_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0008_retention.up.sql")


def downgrade() -> None:
    run_sql_file("0008_retention.down.sql")
