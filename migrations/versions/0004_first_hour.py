"""One switch for local receivers; the special-purpose ranges as one table; OW013, OW014.

Revision ID: 0004
Revises: 0003
"""

from outbox_worker.migrate import run_sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0004_first_hour.up.sql")


def downgrade() -> None:
    run_sql_file("0004_first_hour.down.sql")
