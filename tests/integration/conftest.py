"""The management API served over real HTTP, for the modules that test it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from outbox_worker.api import create_app
from tests.live_server import serve


@pytest.fixture(scope="module")
def api_url(migrated_url: str) -> Iterator[str]:
    with serve(create_app(migrated_url)) as url:
        yield url


@pytest.fixture
def client(database_url: str, api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=10) as c:
        yield c
