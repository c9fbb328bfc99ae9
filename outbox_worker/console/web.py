"""What every console page shares: templates, links, forms, the signed-in viewer, error pages.

Pages are rendered on the server from the package's Jinja templates with
autoescaping on, so every value from the database (URLs, event payloads,
receivers' answers) reaches the browser as text. The responses forbid
inline script and any other origin (Content-Security-Policy) as a second
line: even markup that slipped through could not run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import psycopg
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute

from outbox_worker import errors, logs
from outbox_worker.api.deps import database
from outbox_worker.console import session
from outbox_worker.console.session import Viewer

_HERE = Path(__file__).resolve().parent
_log = logs.get_logger(component="console")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["ms"] = _ms


def base_path(request: Request) -> str:
    return str(request.scope.get("root_path", "")) + "/console"


class Page:
    """One request's rendering context: links carry the operator's chosen owner."""

    def __init__(self, request: Request, viewer: Viewer | None) -> None:
        self.request = request
        self.viewer = viewer
        self.base = base_path(request)

    def url(self, path: str = "/", **query: Any) -> str:
        """A console link; for an operator acting for an owner, with ``owner=``."""
        params = {k: v for k, v in query.items() if v is not None and v != ""}
        if self.viewer and self.viewer.operator and self.viewer.acting and "owner" not in params:
            params["owner"] = self.viewer.acting
        return self.base + path + ("?" + urlencode(params) if params else "")

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        defaults = {"notice": "", "count": "", "error": None}
        html = templates.get_template(template).render(
            page=self,
            viewer=self.viewer,
            url=self.url,
            static=self.base + "/static",
            **{**defaults, **context},
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def redirect(self, path: str, **query: Any) -> RedirectResponse:
        # 303: the browser follows a form's POST with a GET.
        return RedirectResponse(self.url(path, **query), status_code=303, headers=SECURITY_HEADERS)


async def signed_in(request: Request) -> Viewer:
    """The viewer of the request's session cookie (sign-in page otherwise),
    acting for the ``owner`` of the query string, if any."""
    async with database(request).transaction() as conn:
        viewer = await session.viewer(conn, request.cookies.get(session.COOKIE))
    return viewer.for_owner(request.query_params.get("owner"))


async def form(request: Request, viewer: Viewer | None = None) -> dict[str, list[str]]:
    """The urlencoded body of a POST, after the origin and CSRF checks.

    The viewer then acts for the form's ``owner`` (an operator's hidden
    field; a vendor naming another owner gets a 404)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise session.Forbidden("this form was sent from another site")
    body = (await request.body()).decode("utf-8", "replace")
    fields = parse_qs(body, keep_blank_values=True, max_num_fields=200)
    if viewer is not None:
        session.check_csrf(viewer, first(fields, "csrf"))
    return fields


def first(fields: Mapping[str, list[str]], name: str, default: str = "") -> str:
    values = fields.get(name)
    return values[0] if values else default


def acting_for_form(viewer: Viewer, fields: Mapping[str, list[str]]) -> Viewer:
    return viewer.for_owner(first(fields, "owner") or None)


class NeedOwner(Exception):
    """An operator opened an owner's page without choosing an owner."""


def owner_of(viewer: Viewer) -> str:
    if viewer.acting is None:
        raise NeedOwner
    return viewer.acting


_NOT_FOUND = "Not found: there is no such page, or it is not yours to see."


def _error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return Page(request, None).render("error.html", status=status, title=title, message=message)


async def _answer(request: Request, exc: Exception) -> Response:
    if isinstance(exc, session.NotSignedIn):
        if request.method == "GET":
            return Page(request, None).redirect("/login")
        return _error_page(request, 401, "Signed out", "Your session has ended: sign in again.")
    if isinstance(exc, NeedOwner):
        return Page(request, None).redirect("/health", notice="choose-owner")
    if isinstance(exc, RequestValidationError):
        # A malformed id in the path names nothing; a malformed query value is refused.
        if any(issue.get("loc", ("",))[0] == "path" for issue in exc.errors()):
            return _error_page(request, 404, "Not found", _NOT_FOUND)
        return _error_page(request, 422, "Refused", "A value in the address is not valid here.")
    if isinstance(exc, session.Forbidden):
        return _error_page(request, 403, "Refused", str(exc))
    if isinstance(exc, session.OwnerNotFound | errors.NotFound):
        return _error_page(request, 404, "Not found", _NOT_FOUND)
    if isinstance(exc, errors.SchemaNotMigrated):
        return _error_page(request, 503, "Unavailable", exc.message)
    if isinstance(exc, errors.OutboxError):
        return _error_page(request, 422, "Refused", exc.message)
    if isinstance(exc, psycopg.OperationalError):
        _log.error("console.database_unavailable", error=str(exc))
        return _error_page(request, 503, "Unavailable", "The database is unavailable: retry in a moment.")
    if isinstance(exc, psycopg.DataError | UnicodeEncodeError):
        return _error_page(request, 422, "Refused", "A value holds characters the database cannot store.")
    _log.error("console.internal_error", error_type=type(exc).__name__, exc_info=exc)
    return _error_page(request, 500, "Internal error", "Something went wrong on the server; it is logged.")


class ConsoleRoute(APIRoute):
    """A route whose failures are HTML pages (sign-in, 403, 404, 422, 503), not the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return await _answer(request, exc)

        return handle
