"""Console pages of webhooks: list, create, edit, rotate the secret, send a test event, replay, delete."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from outbox_worker import errors, webhooks
from outbox_worker.api.deps import database, secret_box
from outbox_worker.console import data
from outbox_worker.console.session import Viewer
from outbox_worker.console.web import ConsoleRoute, Page, acting_for_form, first, form, owner_of, signed_in

router = APIRouter(route_class=ConsoleRoute)
SignedIn = Annotated[Viewer, Depends(signed_in)]


@dataclass
class HookForm:
    """What the create and edit forms hold, as typed."""

    url: str = ""
    events: list[str] = field(default_factory=list)
    rate_limit: str = ""
    headers: str = ""
    clear_headers: bool = False
    enabled: bool = True

    @classmethod
    def parse(cls, fields: Mapping[str, list[str]]) -> HookForm:
        picked = [e for e in fields.get("events", []) if e]
        typed = [e for e in re.split(r"[\s,]+", first(fields, "patterns")) if e]
        return cls(
            url=first(fields, "url").strip(),
            events=list(dict.fromkeys([*picked, *typed])),
            rate_limit=first(fields, "rate_limit").strip(),
            headers=first(fields, "headers"),
            clear_headers=first(fields, "clear_headers") == "on",
            enabled=first(fields, "enabled") == "on",
        )

    def rate(self) -> float | None:
        if not self.rate_limit:
            return None
        try:
            return float(self.rate_limit)
        except ValueError:
            raise errors.InvalidRateLimit(
                "invalid rate limit: give requests per second as a number (0.01 to 10000), or leave it empty"
            ) from None

    def header_map(self) -> dict[str, str] | None:
        if self.clear_headers:
            return {}
        lines = [line for line in self.headers.splitlines() if line.strip()]
        if not lines:
            return None
        pairs: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise errors.InvalidHeaders('invalid header line: write one "Name: value" per line')
            pairs[name.strip()] = value.strip()
        return pairs


async def _catalogue(request: Request) -> list[str]:
    async with database(request).transaction() as conn:
        return [row["name"] for row in await data.event_types(conn)]


@router.get("/webhooks")
async def list_page(request: Request, viewer: SignedIn, notice: str = "") -> Response:
    page = Page(request, viewer)
    async with database(request).transaction() as conn:
        if viewer.acting is None:
            hooks = await webhooks.list_all_webhooks_async(conn)
        else:
            hooks = await webhooks.list_webhooks_async(conn, viewer.acting)
    return page.render("webhooks.html", hooks=hooks, notice=notice, title="Webhooks")


@router.get("/webhooks/new")
async def new_page(request: Request, viewer: SignedIn) -> Response:
    owner_of(viewer)
    return Page(request, viewer).render(
        "webhook_form.html", form=HookForm(), hook=None, catalogue=await _catalogue(request), error=None,
        title="New webhook",
    )  # fmt: skip


@router.post("/webhooks")
async def create(request: Request, viewer: SignedIn) -> Response:
    fields = await form(request, viewer)
    viewer = acting_for_form(viewer, fields)
    owner = owner_of(viewer)
    page = Page(request, viewer)
    entered = HookForm.parse(fields)
    try:
        async with database(request).transaction() as conn:
            created = await webhooks.create_webhook_async(
                conn, owner, entered.url, entered.events, box=secret_box(request),
                rate_limit=entered.rate(), headers=entered.header_map(),
            )  # fmt: skip
            hook = await webhooks.get_webhook_async(conn, owner, created.id)
    except (errors.ValidationError, errors.WebhookLimitReached) as exc:
        return page.render(
            "webhook_form.html", status=422, form=entered, hook=None, catalogue=await _catalogue(request),
            error=exc.message, title="New webhook",
        )  # fmt: skip
    return page.render(
        "secret.html", status=201, hook=hook, secret=created.secret, created=True, title="Secret"
    )


@router.get("/webhooks/{webhook_id}")
async def edit_page(request: Request, viewer: SignedIn, webhook_id: uuid.UUID, notice: str = "") -> Response:
    owner = owner_of(viewer)
    async with database(request).transaction() as conn:
        hook = await webhooks.get_webhook_async(conn, owner, webhook_id)
    current = HookForm(
        url=hook.url,
        events=hook.events,
        rate_limit="" if hook.rate_limit is None else f"{hook.rate_limit:g}",
        enabled=hook.enabled,
    )
    return Page(request, viewer).render(
        "webhook_form.html", form=current, hook=hook, catalogue=await _catalogue(request), error=None,
        notice=notice, title="Webhook",
    )  # fmt: skip


@router.post("/webhooks/{webhook_id}")
async def update(request: Request, viewer: SignedIn, webhook_id: uuid.UUID) -> Response:
    fields = await form(request, viewer)
    viewer = acting_for_form(viewer, fields)
    owner = owner_of(viewer)
    page = Page(request, viewer)
    entered = HookForm.parse(fields)
    try:
        async with database(request).transaction() as conn:
            rate = entered.rate()
            await webhooks.update_webhook_async(
                conn, owner, webhook_id, url=entered.url, events=entered.events, enabled=entered.enabled,
                # An emptied field removes the limit (0 does, in update_webhook).
                rate_limit=0 if rate is None else rate,
                headers=entered.header_map(), box=secret_box(request),
            )  # fmt: skip
    except errors.ValidationError as exc:
        async with database(request).transaction() as conn:
            hook = await webhooks.get_webhook_async(conn, owner, webhook_id)
        return page.render(
            "webhook_form.html", status=422, form=entered, hook=hook, catalogue=await _catalogue(request),
            error=exc.message, title="Webhook",
        )  # fmt: skip
    return page.redirect(f"/webhooks/{webhook_id}", notice="saved")


@router.post("/webhooks/{webhook_id}/rotate")
async def rotate(request: Request, viewer: SignedIn, webhook_id: uuid.UUID) -> Response:
    viewer = acting_for_form(viewer, await form(request, viewer))
    owner = owner_of(viewer)
    async with database(request).transaction() as conn:
        rotated = await webhooks.rotate_webhook_secret_async(conn, owner, webhook_id, box=secret_box(request))
        hook = await webhooks.get_webhook_async(conn, owner, webhook_id)
    return Page(request, viewer).render(
        "secret.html", hook=hook, secret=rotated.secret, created=False, title="New secret"
    )


@router.post("/webhooks/{webhook_id}/test")
async def send_test(request: Request, viewer: SignedIn, webhook_id: uuid.UUID) -> Response:
    viewer = acting_for_form(viewer, await form(request, viewer))
    owner = owner_of(viewer)
    async with database(request).transaction() as conn:
        delivery_id = await webhooks.send_test_event_async(conn, owner, webhook_id)
    return Page(request, viewer).redirect(f"/deliveries/{delivery_id}", notice="test-sent")


@router.post("/webhooks/{webhook_id}/replay")
async def replay(request: Request, viewer: SignedIn, webhook_id: uuid.UUID) -> Response:
    fields = await form(request, viewer)
    viewer = acting_for_form(viewer, fields)
    owner = owner_of(viewer)
    since = parse_moment(first(fields, "since"))
    if since is None:
        raise errors.ValidationError("give the time to replay failures from, e.g. 2026-12-01T00:00 (UTC)")
    async with database(request).transaction() as conn:
        count = await webhooks.replay_failed_async(conn, owner, webhook_id, since)
    return Page(request, viewer).redirect(
        "/deliveries", webhook=str(webhook_id), notice="replayed", count=str(count)
    )


@router.get("/webhooks/{webhook_id}/delete")
async def delete_page(request: Request, viewer: SignedIn, webhook_id: uuid.UUID) -> Response:
    owner = owner_of(viewer)
    async with database(request).transaction() as conn:
        hook = await webhooks.get_webhook_async(conn, owner, webhook_id)
        deliveries, attempts = await data.log_counts(conn, owner, webhook_id)
    return Page(request, viewer).render(
        "delete.html", hook=hook, deliveries=deliveries, attempts=attempts, title="Delete webhook"
    )


@router.post("/webhooks/{webhook_id}/delete")
async def delete(request: Request, viewer: SignedIn, webhook_id: uuid.UUID) -> Response:
    viewer = acting_for_form(viewer, await form(request, viewer))
    owner = owner_of(viewer)
    async with database(request).transaction() as conn:
        await webhooks.delete_webhook_async(conn, owner, webhook_id)
    return Page(request, viewer).redirect("/webhooks", notice="deleted")


def parse_moment(text: str) -> datetime | None:
    """A time from a form (``datetime-local`` or ISO 8601); UTC unless it says otherwise."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise errors.ValidationError(
            f"invalid time {text[:40]!r}: use ISO 8601 like 2026-12-01T00:00 (UTC)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
