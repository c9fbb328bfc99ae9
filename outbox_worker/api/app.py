"""The management API as one ASGI app: the pool's lifespan, the body limit, both routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox_worker import db, logs, pooling
from outbox_worker.api.brand import router as brand_router
from outbox_worker.api.deliveries import router as deliveries_router
from outbox_worker.api.deps import Database, Limits
from outbox_worker.api.errors import add_exception_handlers, error_response, too_many_requests
from outbox_worker.api.limits import RateLimiter
from outbox_worker.api.models import MAX_BODY_BYTES
from outbox_worker.api.vendor import router as vendor_router
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a 413 in the error envelope.

    A declared Content-Length is judged before anything is read; a chunked
    body is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._too_large()(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI re-raises an HTTPException from the body read as
                    # is, so it reaches the HTTPException handler of errors.py.
                    raise StarletteHTTPException(413, "Content Too Large")
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> JSONResponse:
        return error_response(413, "payload_too_large", "Content Too Large")


class _RateLimitPerAddress:
    """429 for a client address past its rate, before anything else runs:
    no body is read and no database connection is taken."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and (wait := self.limiter.take(client[0])):
            await too_many_requests(wait)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _version() -> str:
    try:
        return metadata.version("outbox-worker")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    database: Database = app.state.outbox_database
    await database.open()
    try:
        yield
    finally:
        await database.close()


def _fastapi(*, openapi_url: str | None, docs_url: str | None, **options: Any) -> FastAPI:
    """FastAPI, its docs page served with Swagger UI's assets from the
    fastapi-offline package (under ``/docs/assets``) instead of a CDN, so
    the page works offline and behind a strict network policy."""
    if openapi_url is None or docs_url is None:
        return FastAPI(openapi_url=openapi_url, docs_url=None, **options)
    from fastapi_offline import FastAPIOffline

    app: FastAPI = FastAPIOffline(
        docs_url=docs_url, static_url=f"{docs_url}/assets", openapi_url=openapi_url, **options
    )
    return app


def create_app(
    settings_or_database_url: Settings | str,
    *,
    pool_max_size: int = 10,
    pool_timeout: float = 5.0,
    openapi_url: str | None = "/openapi.json",
    docs_url: str | None = "/docs",
    console: bool = True,
) -> FastAPI:
    """The management API as an ASGI app: serve it (``outbox-worker api``) or mount it.

    ``pool_timeout`` is how long a request waits for a database connection
    before it gets a 503. ``console``: also serve the web console under
    ``/console`` (:mod:`outbox_worker.console`).
    """
    if isinstance(settings_or_database_url, Settings):
        settings = settings_or_database_url
    else:
        overrides: dict[str, Any] = {"database_url": settings_or_database_url}
        settings = Settings(**overrides)
    app = _fastapi(
        title="outbox_worker management API",
        version=_version(),
        description="Manage webhooks over the outbox SQL functions. Authenticate with `X-Api-Key`.",
        lifespan=_lifespan,
        openapi_url=openapi_url,
        docs_url=docs_url,
        redoc_url=None,
    )
    # With OUTBOX_SECRET_KEYS set, secrets are sealed before the database sees them.
    app.state.outbox_box = SecretBox.from_keys(settings.secret_keys)
    app.state.outbox_database = Database(
        db.libpq_url(settings.database_url),
        max_size=pool_max_size,
        timeout=pool_timeout,
        prepare=settings.prepare_statements,
        policy=pooling.Policy(settings.pooler, logs.get_logger(component="api"), "api"),
    )
    app.state.outbox_settings = settings
    app.state.outbox_limits = limits = Limits(settings.api_rate_per_key, settings.api_rate_per_ip)
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(_RateLimitPerAddress, limiter=limits.per_ip)  # outermost: first
    app.include_router(vendor_router)
    app.include_router(deliveries_router)
    app.include_router(brand_router)
    add_exception_handlers(app)
    if console:
        from outbox_worker.console import install

        install(app)
    return app
