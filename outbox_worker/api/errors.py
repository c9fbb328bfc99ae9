"""The error body of the management API, the exception handlers that send it, and their helpers.

Every error is ``{"code", "message"}`` JSON (the table of codes is in the
package docstring, :mod:`outbox_worker.api`); routes raise, the handlers
installed by :func:`add_exception_handlers` answer.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from outbox_worker import errors, logs
from outbox_worker.api.limits import retry_after
from outbox_worker.api.models import MAX_BODY_BYTES

_log = logs.get_logger(component="api")

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "not_found",
    "method_not_allowed",
    "webhook_limit_reached",
    "payload_too_large",
    "rate_limited",
    "validation_error",
    "invalid_url",
    "unknown_event_type",
    "no_event_types",
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


class Unauthorized(Exception):
    """Missing, unknown or revoked key: one answer for all three."""


class RateLimited(Exception):
    """Too many requests from this key: retry after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


class BrandNotFound(errors.NotFound):
    """The key is not this brand's (whether or not the brand exists)."""


def error_response(
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
    if isinstance(exc, errors.SchemaNotMigrated):
        _log.error("api.schema_not_migrated", error=str(exc))
        return error_response(503, "unavailable", exc.message)
    if isinstance(exc, errors.NotFound):
        return error_response(404, "not_found", _NOT_FOUND_MESSAGES.get(type(exc), "not found"))
    if isinstance(exc, errors.WebhookLimitReached):
        return error_response(409, "webhook_limit_reached", exc.message)
    if isinstance(exc, errors.InvalidURL):
        return error_response(422, "invalid_url", exc.message)
    if isinstance(exc, errors.UnknownEventType):
        return error_response(422, "unknown_event_type", exc.message)
    if isinstance(exc, errors.NoEventTypes):
        return error_response(422, "no_event_types", exc.message)
    if isinstance(exc, errors.InvalidOwnerId):
        return error_response(422, "invalid_owner_id", exc.message)
    if isinstance(exc, errors.ValidationError):
        return error_response(422, "invalid_input", exc.message)
    return await _unexpected(request, exc)


async def _unauthorized(_: Request, __: Exception) -> JSONResponse:
    return error_response(401, "unauthorized", "missing or invalid API key")


def too_many_requests(seconds: float) -> JSONResponse:
    """The 429 of both rate limits, with the seconds until a request is due again."""
    wait = retry_after(seconds)
    return error_response(
        429, "rate_limited", f"too many requests: retry after {wait} s", headers={"Retry-After": wait}
    )


async def _rate_limited(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    return too_many_requests(exc.seconds)


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
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
        return error_response(400, "bad_request", "the request body is not valid JSON", details=issues)
    content_type = request.headers.get("content-type")
    if any(issue["loc"] == ["body"] for issue in issues) and not _is_json(content_type):
        # Without the header the body is not read as JSON at all: say so,
        # rather than that the body is not an object.
        sent = f"it was {content_type!r}" if content_type else "the request had none"
        return error_response(
            422,
            "validation_error",
            f"send the body as JSON with the header Content-Type: application/json ({sent})",
            details=issues,
        )
    return error_response(
        422, "validation_error", "the request does not match the API schema", details=issues
    )


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


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
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


async def _invalid_input(_: Request, exc: Exception) -> JSONResponse:
    # The driver refuses some strings before sending them (NUL bytes, lone
    # surrogates), the server others (SQLSTATE class 22): the input's fault.
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return error_response(422, "invalid_input", f"invalid input: {exc.diag.message_primary}")
    return error_response(
        422, "invalid_input", "invalid input: a value holds characters the database cannot store"
    )


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    _log.error("api.database_unavailable", error=str(exc))
    return error_response(503, "unavailable", "the database is unavailable, retry later")


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    _log.error("api.internal_error", error_type=type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def add_exception_handlers(app: FastAPI) -> None:
    """Answer every exception a request can raise with the error body."""
    app.add_exception_handler(errors.OutboxError, _outbox_error)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(RateLimited, _rate_limited)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(psycopg.DataError, _invalid_input)
    app.add_exception_handler(UnicodeEncodeError, _invalid_input)
    # PoolTimeout is an OperationalError: no connection in time is "unavailable" too.
    app.add_exception_handler(psycopg.OperationalError, _unavailable)
    app.add_exception_handler(Exception, _unexpected)


# -- the OpenAPI document -----------------------------------------------------

# What every route may answer: no key, a refused request, no database.
COMMON_ERRORS = (401, 422, 429, 503)


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses``: the error body, described, for each status it may answer."""
    descriptions = {
        400: "The body is not valid JSON.",
        401: "Missing, unknown or revoked X-Api-Key.",
        404: "Not found, or not this key's owner's (the two are not told apart).",
        409: "The owner already has the maximum number of webhooks.",
        413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
        422: "The request or a value in it was refused.",
        429: "Too many requests from this key or address: retry after `Retry-After` seconds.",
        503: "The database is unavailable, or not migrated.",
    }
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}
