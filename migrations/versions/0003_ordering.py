"""Ordering keys and rate limits: one (webhook, key) at a time, in emit order; paced webhooks.

Revision ID: 0003
Revises: 0002
"""

from outbox_worker.migrate import run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0003_ordering.up.sql")


def downgrade() -> None:
    run_sql_file("0003_ordering.down.sql")
