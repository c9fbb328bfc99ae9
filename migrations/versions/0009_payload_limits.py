"""emit refuses payloads nested over 100 deep or with numbers beyond 1e308.

Revision ID: 0009
Revises: 0008
"""

from outbox_worker.migrate import run_sql_file

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0009_payload_limits.up.sql")


def downgrade() -> None:
    run_sql_file("0009_payload_limits.down.sql")
