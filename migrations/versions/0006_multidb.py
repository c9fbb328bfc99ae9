"""A per-database prefix of webhook-ids, for one worker fleet over many databases.

Revision ID: 0006_multidb
Revises: 0005
"""

from outbox_worker.migrate import run_sql_file

revision = "0006_multidb"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0006_multidb.up.sql")


def downgrade() -> None:
    run_sql_file("0006_multidb.down.sql")
