"""The whole schema: events, webhooks, deliveries, attempts, API keys, views, triggers and the SQL API.

Revision ID: 0001
Revises:
"""

from outbox_worker.migrate import run_sql_file

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0001_initial.up.sql")


def downgrade() -> None:
    run_sql_file("0001_initial.down.sql")
