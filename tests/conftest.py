"""Shared fixtures: a real PostgreSQL for every test worker.

The server is ``OUTBOX_TEST_DATABASE_URL`` when set (CI), else a
testcontainers Postgres when a Docker engine answers, else an embedded
pgserver. Each xdist worker gets its own database, migrated once; each test
starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from outbox_worker import migrate
from outbox_worker.db import as_url, libpq_url
from tests.receiver import Receiver

# Tests reach receivers on loopback over plain http.
TEST_CONFIG = (
    "update outbox.config set allow_http = true, allow_private_networks = true, "
    "max_webhooks_per_owner = 5, max_payload_bytes = 262144, notify = true"
)


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of a PostgreSQL server this test session may create databases on."""
    if url := os.environ.get("OUTBOX_TEST_DATABASE_URL"):
        yield libpq_url(url)
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield libpq_url(container.get_connection_url())
        return
    from outbox_worker import embedded

    url, server = embedded.start(tmp_path_factory.mktemp("pg"))
    try:
        yield url
    finally:
        server.cleanup()


def with_database(url: str, dbname: str) -> str:
    return as_url(url, dbname=dbname)


@pytest.fixture(scope="session")
def make_database(server_url: str) -> Iterator[Any]:
    """Factory of fresh, empty databases, dropped at the end of the session."""
    created: list[str] = []

    def make(prefix: str = "outbox_test") -> str:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        name = f"{prefix}_{worker}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        created.append(name)
        return with_database(server_url, name)

    yield make
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def migrated_url(make_database: Any) -> str:
    url: str = make_database()
    migrate.upgrade(url)
    return url


@pytest.fixture
def database_url(migrated_url: str) -> str:
    """The worker's migrated database, emptied for this test."""
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(
            "truncate outbox.delivery_attempts, outbox.deliveries, outbox.events, outbox.webhooks, "
            "outbox.api_keys, outbox.console_sessions restart identity cascade"
        )
        conn.execute(TEST_CONFIG)
    return migrated_url


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for arranging and inspecting state."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP receiver on a free loopback port, recording every request."""
    r = await Receiver().start()
    yield r
    await r.stop()
