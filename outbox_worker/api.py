"""The management HTTP API (FastAPI): webhooks over the same SQL functions as the CLI.

Two route families share one implementation:

* vendor routes, ``/api/vendor/webhooks[/...]``, as in the vendor docs (the
  owner is the one the ``X-Api-Key`` belongs to);
* brand routes, ``/brands/{id}/webhooks[/...]``, in the brand webhooks
  envelope (the owner is the brand id of the path, and the key must be that
  brand's).

Every rule (URL policy, known event types, the per-owner limit, ownership) is
the SQL functions'; the routes translate JSON to their arguments and their
exceptions to statuses. Errors are ``{"code", "message"}`` JSON:

========================  ======  =================================================
code                      status  when
========================  ======  =================================================
``bad_request``           400     the body is not JSON
``unauthorized``          401     the key is missing, unknown or revoked
``not_found``             404     no such object for this key (or another owner's)
``method_not_allowed``    405     the path exists, the method does not
``webhook_limit_reached`` 409     the owner has the maximum number of webhooks
``payload_too_large``     413     the body is over 64 KiB
``validation_error``      422     the request does not match the OpenAPI schema
``invalid_url``           422     the URL is refused (scheme, host, private address)
``unknown_event_type``    422     an event type or topic is not in the catalogue
``invalid_owner_id``      422     the owner id is refused
``invalid_input``         422     a value the database cannot store (NUL, bad UTF-8)
``unavailable``           503     the database cannot be reached
``internal_error``        500     a bug
``http_error``            other   any other HTTP-level refusal
========================  ======  =================================================

Input the database refuses is a 422 like input the schema refuses: both are
well-formed requests whose content is wrong; 400 is kept for bodies that are
not JSON at all.

The app owns a psycopg ``AsyncConnectionPool``, opened in its lifespan. Starlette
does not run the lifespan of a mounted sub-application, so when mounted the
pool opens on the first request instead; to also close it on shutdown, enter
the sub-app's lifespan from the parent's::

    api = create_app(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api):
            yield

    parent = FastAPI(lifespan=lifespan)
    parent.mount("/outbox", api)

The key check and the operation each run in a transaction of their own, both
committed before the response is sent.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import metadata
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outbox_worker import api_keys, db, errors, logs, pooling, webhooks
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings

__all__ = ["create_app"]

MAX_PAGE_SIZE = 100
# Webhook bodies are a URL and a few event names; nothing legitimate is near this.
MAX_BODY_BYTES = 64 * 1024
_MAX_BIGINT = 2**63 - 1
_log = logs.get_logger(component="api")

# -- models -------------------------------------------------------------------

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "webhook_limit_reached",
    "payload_too_large",
    "validation_error",
    "invalid_url",
    "unknown_event_type",
    "invalid_owner_id",
    "invalid_input",
    "unavailable",
    "internal_error",
    "http_error",
]


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description='Where the problem is, e.g. `["body", "url"]`.')
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error: a stable machine-readable `code` and a human-readable `message`."""

    code: ErrorCode
    message: str
    details: list[ValidationIssue] | None = Field(
        None, description="Present on `validation_error` only: one entry per problem."
    )


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://meine-app.de/webhooks/brutlers",
                    "events": ["order.created", "order.status_changed"],
                }
            ]
        },
    )

    url: str = Field(description="Receiver URL (https).")
    events: list[str] = Field(description='Event types; `"*"` and `"prefix.*"` are wildcards.')


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="New receiver URL; omitted or null = unchanged.")
    events: list[str] | None = Field(
        None, description="Replaces the subscription; omitted or null = unchanged."
    )
    status: Literal["active", "disabled"] | None = Field(
        None, description="`disabled` stops deliveries (queued ones fail); `active` resumes."
    )


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    status: Literal["active", "disabled"]
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_success_at: datetime | None
    failing_since: datetime | None

    @classmethod
    def from_webhook(cls, hook: webhooks.Webhook) -> WebhookOut:
        return cls(**_webhook_fields(hook))


class WebhookCreated(WebhookOut):
    secret: str = Field(description="HMAC-SHA256 signing secret. Shown only in this response: store it now.")

    @classmethod
    def from_parts(cls, hook: webhooks.Webhook, secret: str) -> WebhookCreated:
        return cls(**_webhook_fields(hook), secret=secret)


class WebhookList(BaseModel):
    data: list[WebhookOut]


class SecretOut(BaseModel):
    id: uuid.UUID
    secret: str = Field(
        description="The new signing secret, shown only here. "
        "The old one keeps signing during the overlap window."
    )


class AttemptOut(BaseModel):
    attempt: int
    attempted_at: datetime
    duration_ms: float
    status_code: int | None
    error_class: str | None
    error: str | None
    response_body: str | None = Field(description="Start of the receiver's response body.")


class DeliveryOut(BaseModel):
    id: int
    event_id: int
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempt_count: int = Field(description="Attempts in the current round (a redelivery starts a new round).")
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="When the next attempt is due; null unless pending.")
    completed_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    attempts: list[AttemptOut] = Field(description="Every attempt logged, oldest first.")

    @classmethod
    def from_row(cls, row: db.Row) -> DeliveryOut:
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            status=row["status"],
            attempt_count=row["attempts"],
            created_at=row["created_at"],
            next_attempt_at=row["next_attempt_at"] if row["status"] == "pending" else None,
            completed_at=row["completed_at"],
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            attempts=row["attempt_log"],
        )


class DeliveryPage(BaseModel):
    data: list[DeliveryOut] = Field(description="Deliveries, newest first.")
    next: int | None = Field(description="Pass as `cursor` to get the next page; null on the last page.")


class BrandWebhookIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"topic": "Showings", "url": "https://example.com/hooks"}]},
    )

    topic: str = Field(description="`Deals`, `Showings`, `Contacts` (or any event type).")
    url: str


class BrandWebhook(BaseModel):
    id: uuid.UUID
    created_at: float = Field(description="Seconds since the epoch.")
    updated_at: float = Field(description="Seconds since the epoch.")
    deleted_at: None = Field(description="Always null: deleted webhooks are gone.")
    brand: str
    topic: str
    url: str
    tags: None
    type: Literal["brand_webhook"]


class BrandWebhookCreated(BaseModel):
    id: uuid.UUID
    created_at: float
    updated_at: float
    deleted_at: None
    brand: str
    topic: str
    url: str
    key: str = Field(description="The signing secret. Shown only in this response: store it now.")
    tags: None
    type: Literal["brand_webhook"]


class BrandCreatedEnvelope(BaseModel):
    code: Literal["OK"]
    data: BrandWebhookCreated


class ListInfo(BaseModel):
    count: int = Field(description="Webhooks in `data`.")
    total: int = Field(description="Webhooks matching the request (no pagination: equal to `count`).")


class BrandListEnvelope(BaseModel):
    code: Literal["OK"]
    data: list[BrandWebhook]
    info: ListInfo


def _webhook_fields(hook: webhooks.Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": hook.events,
        "status": "active" if hook.enabled else "disabled",
        "disabled_reason": hook.disabled_reason,
        "created_at": hook.created_at,
        "updated_at": hook.updated_at,
        "last_success_at": hook.last_success_at,
        "failing_since": hook.failing_since,
    }


def _brand_fields(hook: webhooks.Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "created_at": hook.created_at.timestamp(),
        "updated_at": hook.updated_at.timestamp(),
        "deleted_at": None,
        "brand": hook.owner_id,
        # A brand webhook has one topic; one made elsewhere (CLI, vendor
        # route) for the same owner may have several.
        "topic": ",".join(hook.events),
        "url": hook.url,
        "tags": None,
        "type": "brand_webhook",
    }


# -- errors -------------------------------------------------------------------


class Unauthorized(Exception):
    """Missing, unknown or revoked key: one answer for all three."""


class BrandNotFound(errors.NotFound):
    """The key is not this brand's (whether or not the brand exists)."""


def _error(
    status: int,
    code: ErrorCode,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


# Fixed messages: the id a caller sent is never echoed, so a 404 for another
# owner's object is byte-for-byte the 404 for an object that never existed.
_NOT_FOUND_MESSAGES: dict[type[errors.NotFound], str] = {
    errors.WebhookNotFound: "webhook not found",
    errors.DeliveryNotFound: "delivery not found",
    BrandNotFound: "brand not found",
}


async def _outbox_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, errors.NotFound):
        return _error(404, "not_found", _NOT_FOUND_MESSAGES.get(type(exc), "not found"))
    if isinstance(exc, errors.WebhookLimitReached):
        return _error(409, "webhook_limit_reached", exc.message)
    if isinstance(exc, errors.InvalidURL):
        return _error(422, "invalid_url", exc.message)
    if isinstance(exc, errors.UnknownEventType):
        return _error(422, "unknown_event_type", exc.message)
    if isinstance(exc, errors.InvalidOwnerId):
        return _error(422, "invalid_owner_id", exc.message)
    if isinstance(exc, errors.ValidationError):
        return _error(422, "invalid_input", exc.message)
    return await _unexpected(request, exc)


async def _unauthorized(_: Request, __: Exception) -> JSONResponse:
    return _error(401, "unauthorized", "missing or invalid API key")


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Only location, message and type: pydantic's "input" would echo the
    # request back, and "ctx" may hold objects JSON cannot carry.
    issues = [
        {
            "loc": [part if isinstance(part, int) else str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    if any(issue["type"] == "json_invalid" for issue in issues):
        return _error(400, "bad_request", "the request body is not valid JSON", details=issues)
    return _error(422, "validation_error", "the request does not match the API schema", details=issues)


_HTTP_CODES: dict[int, ErrorCode] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    # Starlette's Allow names the methods of the first route matching the
    # path only, and a path served by several routes (GET and POST on the
    # collection) needs all of them: ask the router about each method.
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    )


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return _error(exc.status_code, code, str(exc.detail), headers=headers)


async def _invalid_input(_: Request, exc: Exception) -> JSONResponse:
    # The driver refuses some strings before sending them (NUL bytes, lone
    # surrogates), the server others (SQLSTATE class 22): the input's fault.
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return _error(422, "invalid_input", f"invalid input: {exc.diag.message_primary}")
    return _error(422, "invalid_input", "invalid input: a value holds characters the database cannot store")


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    _log.error("api.database_unavailable", error=str(exc))
    return _error(503, "unavailable", "the database is unavailable, retry later")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    _log.error("api.internal_error", error_type=type(exc).__name__, exc_info=exc)
    return _error(500, "internal_error", "internal error")


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
                    # is, so it reaches _http_exception.
                    raise StarletteHTTPException(413, "Content Too Large")
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> JSONResponse:
        return _error(413, "payload_too_large", "Content Too Large")


# -- the pool -----------------------------------------------------------------


class _Database:
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


def _database(request: Request) -> _Database:
    database: _Database = request.app.state.outbox_database
    return database


# -- authentication -----------------------------------------------------------

_api_key_header = APIKeyHeader(
    name="X-Api-Key",
    scheme_name="ApiKey",
    description="A key issued by `outbox-worker api-keys create --owner OWNER`.",
    auto_error=False,
)


async def key_owner(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> str:
    """The owner the request's X-Api-Key acts for; 401 for a missing, unknown or revoked key."""
    if not key:
        raise Unauthorized
    async with _database(request).transaction() as conn:
        owner = await api_keys.api_key_owner_async(conn, key)
    if owner is None:
        raise Unauthorized
    return owner


async def brand_owner(
    brand_id: Annotated[str, Path(description="Brand id (the webhooks' owner).")],
    owner: Annotated[str, Depends(key_owner)],
) -> str:
    """The brand of the path, provided the key is that brand's.

    Else 404, the answer for a brand that does not exist.
    """
    if brand_id != owner:
        raise BrandNotFound("brand not found")
    return owner


VendorOwner = Annotated[str, Depends(key_owner)]
BrandOwner = Annotated[str, Depends(brand_owner)]
WebhookId = Annotated[uuid.UUID, Path(description="Webhook id.")]
DeliveryId = Annotated[int, Path(ge=1, le=_MAX_BIGINT, description="Delivery id.")]

# -- routes -------------------------------------------------------------------


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The body is not valid JSON.",
        401: "Missing, unknown or revoked X-Api-Key.",
        404: "Not found, or not this key's owner's (the two are not told apart).",
        409: "The owner already has the maximum number of webhooks.",
        413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
        422: "The request or a value in it was refused.",
        503: "The database is unavailable.",
    }
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}


_COMMON = (401, 422, 503)
vendor = APIRouter(prefix="/api/vendor/webhooks", tags=["vendor webhooks"])
brand = APIRouter(prefix="/brands/{brand_id}/webhooks", tags=["brand webhooks"])


@vendor.post("", status_code=201, responses=_responses(400, *_COMMON, 409, 413))
async def create_webhook(request: Request, owner: VendorOwner, body: WebhookCreate) -> WebhookCreated:
    """Register a webhook. The response carries its signing secret, shown this once."""
    async with _database(request).transaction() as conn:
        created = await webhooks.create_webhook_async(conn, owner, body.url, body.events, box=_box(request))
        hook = await webhooks.get_webhook_async(conn, owner, created.id)
    return WebhookCreated.from_parts(hook, created.secret)


@vendor.get("", responses=_responses(*_COMMON))
async def list_webhooks(
    request: Request,
    owner: VendorOwner,
    event: Annotated[str | None, Query(description="Only webhooks this event type reaches.")] = None,
) -> WebhookList:
    """List the key owner's webhooks (never their secrets)."""
    async with _database(request).transaction() as conn:
        hooks = await webhooks.list_webhooks_async(conn, owner, event)
    return WebhookList(data=[WebhookOut.from_webhook(h) for h in hooks])


@vendor.get("/{webhook_id}", responses=_responses(*_COMMON, 404))
async def get_webhook(request: Request, owner: VendorOwner, webhook_id: WebhookId) -> WebhookOut:
    """One webhook (never its secret)."""
    async with _database(request).transaction() as conn:
        hook = await webhooks.get_webhook_async(conn, owner, webhook_id)
    return WebhookOut.from_webhook(hook)


@vendor.patch("/{webhook_id}", responses=_responses(400, *_COMMON, 404, 413))
async def update_webhook(
    request: Request, owner: VendorOwner, webhook_id: WebhookId, body: WebhookUpdate
) -> WebhookOut:
    """Update the URL, events or status of a webhook; omitted fields are unchanged."""
    enabled = None if body.status is None else body.status == "active"
    async with _database(request).transaction() as conn:
        hook = await webhooks.update_webhook_async(
            conn, owner, webhook_id, url=body.url, events=body.events, enabled=enabled
        )
    return WebhookOut.from_webhook(hook)


@vendor.delete("/{webhook_id}", status_code=204, response_class=Response, responses=_responses(*_COMMON, 404))
async def delete_webhook(request: Request, owner: VendorOwner, webhook_id: WebhookId) -> Response:
    """Delete a webhook and all its delivery logs."""
    async with _database(request).transaction() as conn:
        await webhooks.delete_webhook_async(conn, owner, webhook_id)
    return Response(status_code=204)


@vendor.post("/{webhook_id}/rotate-secret", responses=_responses(*_COMMON, 404))
async def rotate_secret(request: Request, owner: VendorOwner, webhook_id: WebhookId) -> SecretOut:
    """Issue a new signing secret, shown this once; the old one keeps signing for the overlap window."""
    async with _database(request).transaction() as conn:
        rotated = await webhooks.rotate_webhook_secret_async(conn, owner, webhook_id, box=_box(request))
    return SecretOut(id=rotated.id, secret=rotated.secret)


@vendor.get("/{webhook_id}/deliveries", responses=_responses(*_COMMON, 404))
async def list_deliveries(
    request: Request,
    owner: VendorOwner,
    webhook_id: WebhookId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Deliveries per page.")] = 20,
    cursor: Annotated[
        int | None, Query(ge=1, le=_MAX_BIGINT, description="The `next` of the previous page.")
    ] = None,
) -> DeliveryPage:
    """The webhook's delivery log, newest first, each delivery with its attempts."""
    params = {"owner_id": owner, "webhook_id": webhook_id, "before_id": cursor, "max_rows": limit + 1}
    async with _database(request).transaction() as conn:
        rows = await db.fetch_async(conn, "list_deliveries", params)
    page = [DeliveryOut.from_row(r) for r in rows[:limit]]
    return DeliveryPage(data=page, next=page[-1].id if len(rows) > limit else None)


@vendor.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    responses=_responses(*_COMMON, 404),
)
async def redeliver(
    request: Request, owner: VendorOwner, webhook_id: WebhookId, delivery_id: DeliveryId
) -> DeliveryOut:
    """Queue a new round of attempts for one delivery (same `webhook-id`, so receivers can deduplicate)."""
    ids = {"owner_id": owner, "webhook_id": webhook_id, "delivery_id": delivery_id}
    async with _database(request).transaction() as conn:
        # outbox.redeliver checks the owner; this also ties the delivery to the webhook of the path.
        await db.fetch_async(conn, "get_delivery", ids)
        await webhooks.redeliver_async(conn, delivery_id, owner)
        row = (await db.fetch_async(conn, "get_delivery", ids))[0]
    return DeliveryOut.from_row(row)


@brand.post("", responses=_responses(400, *_COMMON, 404, 409, 413))
async def create_brand_webhook(
    request: Request, owner: BrandOwner, body: BrandWebhookIn
) -> BrandCreatedEnvelope:
    """Create a webhook of the brand for one topic.

    Deviation from the brand webhooks API this mirrors: `key` (the signing
    secret) appears in this response only; listings never return it.
    """
    async with _database(request).transaction() as conn:
        created = await webhooks.create_webhook_async(conn, owner, body.url, [body.topic], box=_box(request))
        hook = await webhooks.get_webhook_async(conn, owner, created.id)
    data = BrandWebhookCreated(**_brand_fields(hook), key=created.secret)
    return BrandCreatedEnvelope(code="OK", data=data)


@brand.get("", responses=_responses(*_COMMON, 404))
async def list_brand_webhooks(
    request: Request,
    owner: BrandOwner,
    topic: Annotated[str | None, Query(description="Only webhooks of this topic.")] = None,
) -> BrandListEnvelope:
    """All webhooks of the brand, optionally of one topic.

    Deviation from the brand webhooks API this mirrors: no `key` field (the
    secret is shown only when a webhook is created).
    """
    async with _database(request).transaction() as conn:
        hooks = await webhooks.list_webhooks_async(conn, owner, topic)
    data = [BrandWebhook(**_brand_fields(h)) for h in hooks]
    return BrandListEnvelope(code="OK", data=data, info=ListInfo(count=len(data), total=len(data)))


@brand.delete("/{webhook_id}", status_code=204, response_class=Response, responses=_responses(*_COMMON, 404))
async def delete_brand_webhook(request: Request, owner: BrandOwner, webhook_id: WebhookId) -> Response:
    """Delete a webhook of the brand, with its delivery logs."""
    async with _database(request).transaction() as conn:
        await webhooks.delete_webhook_async(conn, owner, webhook_id)
    return Response(status_code=204)


# -- the app ------------------------------------------------------------------


def _version() -> str:
    try:
        return metadata.version("outbox-worker")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    database: _Database = app.state.outbox_database
    await database.open()
    try:
        yield
    finally:
        await database.close()


def _box(request: Request) -> SecretBox | None:
    box: SecretBox | None = request.app.state.outbox_box
    return box


def create_app(
    settings_or_database_url: Settings | str,
    *,
    pool_max_size: int = 10,
    pool_timeout: float = 5.0,
    openapi_url: str | None = "/openapi.json",
    docs_url: str | None = "/docs",
) -> FastAPI:
    """The management API as an ASGI app: serve it (``outbox-worker api``) or mount it.

    ``pool_timeout`` is how long a request waits for a database connection
    before it gets a 503.
    """
    if isinstance(settings_or_database_url, Settings):
        settings = settings_or_database_url
    else:
        overrides: dict[str, Any] = {"database_url": settings_or_database_url}
        settings = Settings(**overrides)
    app = FastAPI(
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
    app.state.outbox_database = _Database(
        db.libpq_url(settings.database_url),
        max_size=pool_max_size,
        timeout=pool_timeout,
        prepare=settings.prepare_statements,
        policy=pooling.Policy(settings.pooler, _log, "api"),
    )
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    app.include_router(vendor)
    app.include_router(brand)
    app.add_exception_handler(errors.OutboxError, _outbox_error)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(psycopg.DataError, _invalid_input)
    app.add_exception_handler(UnicodeEncodeError, _invalid_input)
    # PoolTimeout is an OperationalError: no connection in time is "unavailable" too.
    app.add_exception_handler(psycopg.OperationalError, _unavailable)
    app.add_exception_handler(Exception, _unexpected)
    return app
