"""Unit tests need no database: asking for one is a mistake caught here."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def server_url() -> str:
    raise pytest.UsageError("a unit test asked for PostgreSQL: move it to tests/integration")
