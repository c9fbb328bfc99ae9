"""Console sign-in and sign-out, and the console's front door."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from outbox_worker.api.deps import database
from outbox_worker.console import session
from outbox_worker.console.session import Viewer
from outbox_worker.console.web import ConsoleRoute, Page, first, form, signed_in

router = APIRouter(route_class=ConsoleRoute)


@router.get("/")
async def home(request: Request, viewer: Annotated[Viewer, Depends(signed_in)]) -> Response:
    return Page(request, viewer).redirect("/health" if viewer.operator else "/webhooks")


@router.get("/login")
async def login_page(request: Request) -> Response:
    return Page(request, None).render("login.html", error=None, title="Sign in")


@router.post("/login")
async def login(request: Request) -> Response:
    # No session yet, so no CSRF token: the cookie is SameSite=Strict and
    # the origin is checked, so another site cannot sign a browser in.
    fields = await form(request)
    page = Page(request, None)
    async with database(request).transaction() as conn:
        token = await session.sign_in(conn, first(fields, "key"))
    if token is None:
        return page.render("login.html", status=401, error="That key is unknown or revoked.", title="Sign in")
    response = page.redirect("/")
    response.set_cookie(
        session.COOKIE, token, max_age=session.LIFETIME_SECONDS, path=page.base, httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request, viewer: Annotated[Viewer, Depends(signed_in)]) -> Response:
    await form(request, viewer)
    token = request.cookies.get(session.COOKIE, "")
    async with database(request).transaction() as conn:
        await session.sign_out(conn, token)
    page = Page(request, None)
    response = page.redirect("/login")
    response.delete_cookie(session.COOKIE, path=page.base, httponly=True, samesite="strict")
    return response
