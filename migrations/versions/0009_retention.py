"""Retention run by the workers: a lease row electing one purger, a log of passes.

Revision ID: 0009
Revises: 0008
"""

from outbox_worker.migrate import run_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0009_retention.up.sql")


def downgrade() -> None:
    run_sql_file("0009_retention.down.sql")
