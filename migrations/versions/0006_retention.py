"""Retention run by the workers: a lease row electing one purger, a log of passes.

Revision ID: 0006_retention
Revises: 0005
"""

from outbox_worker.migrate import run_sql_file

revision = "0006_retention"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0006_retention.up.sql")


def downgrade() -> None:
    run_sql_file("0006_retention.down.sql")
