"""Ordering and idempotency keys, webhook rate limits and headers, test events, delivery log.

Revision ID: 0004
Revises: 0001
"""

from outbox_worker.migrate import run_sql_file

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0004_delivery_features.up.sql")


def downgrade() -> None:
    run_sql_file("0004_delivery_features.down.sql")
