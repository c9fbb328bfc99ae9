"""Quiet NOTIFY: emitting transactions notify only when no worker is already draining.

Revision ID: 0003
Revises: 0002
"""

from outbox_worker.migrate import run_sql_file

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0003_quiet_notify.up.sql")


def downgrade() -> None:
    run_sql_file("0003_quiet_notify.down.sql")
