"""Hardening: bounded event filters, the owner required, previous secrets erased.

Revision ID: 0002
Revises: 0001
"""

from outbox_worker.migrate import run_sql_file

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file("0002_hardening.up.sql")


def downgrade() -> None:
    run_sql_file("0002_hardening.down.sql")
