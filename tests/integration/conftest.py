"""The management API served over real HTTP, for the modules that test it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from outbox_worker.api import create_app
from outbox_worker.settings import Settings
from tests.live_server import serve


@pytest.fixture(scope="module")
def api_url(migrated_url: str) -> Iterator[str]:
    # No rate limits here: these tests fire requests at machine speed
    # (tests/integration/test_api_limits.py tests the limits).
    unlimited = Settings(database_url=migrated_url, api_rate_per_key=0, api_rate_per_ip=0)
    with serve(create_app(unlimited)) as url:
        yield url


@pytest.fixture
def client(database_url: str, api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=10) as c:
        yield c
