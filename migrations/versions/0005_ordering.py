"""Ordering keys: deliveries of one (webhook, key) one at a time, in emit order.

Revision ID: 0005
Revises: 0001
"""

from outbox_worker.migrate import run_sql_file

revision = "0005"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0005_ordering.up.sql")


def downgrade() -> None:
    run_sql_file("0005_ordering.down.sql")
