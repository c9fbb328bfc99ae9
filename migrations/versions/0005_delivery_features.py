"""Ordering and idempotency keys, webhook rate limits and headers, test events, delivery log.

Revision ID: 0005
Revises: 0004
"""

from outbox_worker.migrate import run_sql_file

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0005_delivery_features.up.sql")


def downgrade() -> None:
    run_sql_file("0005_delivery_features.down.sql")
