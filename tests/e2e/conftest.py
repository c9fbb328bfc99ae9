"""Fixtures of the end-to-end tests of the web console."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.console import serve_console


@pytest.fixture(scope="module")
def console_url(migrated_url: str) -> Iterator[str]:
    yield from serve_console(migrated_url)
