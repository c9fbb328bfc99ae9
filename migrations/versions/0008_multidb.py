"""A per-database prefix of webhook-ids, for one worker fleet over many databases.

Revision ID: 0008
Revises: 0007
"""

from outbox_worker.migrate import run_sql_file

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0008_multidb.up.sql")


def downgrade() -> None:
    run_sql_file("0008_multidb.down.sql")
