"""What the routes of both the vendor API and the brand API depend on.

The app's connection pool and secret box (both kept on ``app.state`` by
:func:`outbox_worker.api.app.create_app`), the key check, the webhook id of
the path, and the one route both APIs declare alike (delete a webhook). They
live here, below the route modules and the app, so that the app can import
the routers without the routers importing the app.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
from fastapi import Path, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from psycopg_pool import AsyncConnectionPool

from outbox_worker import api_keys, pooling, webhooks
from outbox_worker.api.errors import COMMON_ERRORS, RateLimited, Unauthorized, documented_errors
from outbox_worker.api.limits import KeyCache, RateLimiter
from outbox_worker.secretbox import SecretBox

# -- the pool -----------------------------------------------------------------


class Database:
    """The app's connection pool: opened by the lifespan, or by the first
    request when the app is mounted (mounted apps get no lifespan)."""

    def __init__(
        self, conninfo: str, *, max_size: int, timeout: float, prepare: bool, policy: pooling.Policy
    ) -> None:
        self._conninfo = conninfo
        self._policy = policy
        self._max_size = max_size
        self._timeout = timeout
        self._prepare = prepare
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        async with self._lock:
            if self._pool is None:
                pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                    self._conninfo,
                    min_size=1,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    open=False,
                    # Behind transaction-mode PgBouncer prepared statements break.
                    kwargs={} if self._prepare else {"prepare_threshold": None},
                    # A connection killed by a database restart is replaced, not handed out.
                    check=AsyncConnectionPool.check_connection,
                    # Nothing kept on a session behind a transaction-mode pooler.
                    configure=self._policy.configure,
                    name="outbox-api",
                )
                # Not waiting for the first connection: the API starts while
                # the database is down and answers 503 until it is back.
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    async def close(self) -> None:
        async with self._lock:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One connection in one transaction: committed on exit, rolled back on error."""
        pool = self._pool or await self.open()
        async with pool.connection() as conn:
            yield conn


def database(request: Request) -> Database:
    app_database: Database = request.app.state.outbox_database
    return app_database


def secret_box(request: Request) -> SecretBox | None:
    box: SecretBox | None = request.app.state.outbox_box
    return box


# -- authentication -----------------------------------------------------------

_api_key_header = APIKeyHeader(
    name="X-Api-Key",
    scheme_name="ApiKey",
    description="A key issued by `outbox-worker api-keys create --owner OWNER`.",
    auto_error=False,
)


class Limits:
    """The app's rate limits and key cache (:mod:`outbox_worker.api.limits`)."""

    def __init__(self, per_key: float, per_ip: float) -> None:
        self.per_key = RateLimiter(per_key)
        self.per_ip = RateLimiter(per_ip)
        self.keys = KeyCache()


async def key_owner(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> str:
    """The owner the request's X-Api-Key acts for; 401 for a missing, unknown
    or revoked key, 429 past the key's rate. A key's lookup is reused for
    :data:`~outbox_worker.api.limits.KEY_TTL` seconds."""
    if not key:
        raise Unauthorized
    limits: Limits = request.app.state.outbox_limits
    digest = limits.keys.digest(key)
    if wait := limits.per_key.take(digest):
        raise RateLimited(wait)
    found, owner = limits.keys.get(digest)
    if not found:
        async with database(request).transaction() as conn:
            owner = await api_keys.api_key_owner_async(conn, key)
        limits.keys.put(digest, owner)
    if owner is None:
        raise Unauthorized
    return owner


WebhookId = Annotated[uuid.UUID, Path(description="Webhook id.")]


# -- the delete route ---------------------------------------------------------

# The declaration of ``DELETE .../{webhook_id}`` in both routers: 204, no body.
DELETE_ROUTE: dict[str, Any] = {
    "status_code": 204,
    "response_class": Response,
    "responses": documented_errors(*COMMON_ERRORS, 404),
}


async def delete_owned(request: Request, owner: str, webhook_id: uuid.UUID) -> Response:
    """Delete the owner's webhook with its delivery logs (404 if the owner has no such webhook)."""
    async with database(request).transaction() as conn:
        await webhooks.delete_webhook_async(conn, owner, webhook_id)
    return Response(status_code=204)
