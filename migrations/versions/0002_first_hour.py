"""One switch for local receivers; the special-purpose ranges as one table; OW013, OW014.

Revision ID: 0002
Revises: 0001
"""

from outbox_worker.migrate import run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0002_first_hour.up.sql")


def downgrade() -> None:
    run_sql_file("0002_first_hour.down.sql")
