"""Console pages of the delivery log: filter and page it, open an attempt, redeliver."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from outbox_worker import db, errors, webhooks
from outbox_worker.api.deliveries import request_body
from outbox_worker.api.deps import database
from outbox_worker.api.models import MAX_BIGINT, DeliveryOut
from outbox_worker.console import data
from outbox_worker.console.hooks import parse_moment
from outbox_worker.console.session import Viewer
from outbox_worker.console.web import ConsoleRoute, Page, acting_for_form, form, owner_of, signed_in
from outbox_worker.settings import Settings
from outbox_worker.signing import message_id

router = APIRouter(route_class=ConsoleRoute)
SignedIn = Annotated[Viewer, Depends(signed_in)]

PAGE_SIZE = 50
STATUSES = ("pending", "delivered", "failed")


def _id(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) <= MAX_BIGINT else None


def _webhook(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text) if text else None
    except ValueError:
        raise errors.WebhookNotFound(text) from None


@router.get("/deliveries")
async def log_page(
    request: Request,
    viewer: SignedIn,
    webhook: str = "",
    event_type: str = "",
    status: str = "",
    since: str = "",
    until: str = "",
    before: str = "",
    notice: str = "",
    count: str = "",
) -> Response:
    owner = owner_of(viewer)
    filters = {"webhook": webhook, "event_type": event_type, "status": status, "since": since, "until": until}
    if status and status not in STATUSES:
        raise errors.ValidationError(f"unknown status {status[:20]!r}: pending, delivered or failed")
    params = {
        "owner_id": owner,
        "webhook_id": _webhook(webhook),
        "before_id": _id(before),
        "max_rows": PAGE_SIZE + 1,  # one more tells whether an older page exists
        "status": status or None,
        "created_since": parse_moment(since),
        "created_until": parse_moment(until),
        "event_type": event_type[:100] or None,
    }
    async with database(request).transaction() as conn:
        rows = await db.fetch_async(conn, "list_deliveries", params)
        hooks = await webhooks.list_webhooks_async(conn, owner)
        catalogue = [row["name"] for row in await data.event_types(conn)]
    deliveries = [DeliveryOut.from_row(r) for r in rows[:PAGE_SIZE]]
    older = deliveries[-1].id if len(rows) > PAGE_SIZE else None
    return Page(request, viewer).render(
        "deliveries.html", deliveries=deliveries, older=older, filters=filters, paged=bool(before),
        hooks=hooks, urls={h.id: h.url for h in hooks}, catalogue=catalogue, statuses=STATUSES,
        notice=notice, count=count, title="Delivery log",
    )  # fmt: skip


def _request_headers(
    settings: Settings, delivery: DeliveryOut, header_names: list[str], prefix: str = ""
) -> list[tuple[str, str]]:
    """The headers every attempt of this delivery sent, as far as they are
    kept: signatures and the webhook's own header values are not stored."""
    return [
        ("Content-Type", "application/json"),
        ("User-Agent", settings.user_agent),
        ("webhook-id", message_id(delivery.event_id, prefix)),  # the database's prefix, as sent
        ("webhook-timestamp", "the attempt's time, in Unix seconds"),
        ("webhook-signature", "v1,<HMAC-SHA256 with the webhook's secret> (not stored)"),
        (settings.signature_header, "<hex HMAC-SHA256 of the body> (not stored)"),
        *((name, "<sealed: never shown>") for name in header_names),
    ]


@router.get("/deliveries/{delivery_id}")
async def delivery_page(request: Request, viewer: SignedIn, delivery_id: int, notice: str = "") -> Response:
    owner = owner_of(viewer)
    if _id(str(delivery_id)) is None:
        raise errors.DeliveryNotFound(str(delivery_id))
    ids = {"owner_id": owner, "webhook_id": None, "delivery_id": delivery_id}
    async with database(request).transaction() as conn:
        delivery = DeliveryOut.from_row((await db.fetch_async(conn, "get_delivery", ids))[0])
        stored = (await db.fetch_async(conn, "delivery_body", ids))[0]
        hook = await webhooks.get_webhook_async(conn, owner, delivery.webhook_id)
        [config] = await db.fetch_async(conn, "message_id_prefix", {})
    settings: Settings = request.app.state.outbox_settings
    context: dict[str, Any] = {
        "delivery": delivery,
        "hook": hook,
        "body": request_body(stored),
        "headers": _request_headers(settings, delivery, hook.header_names, config["message_id_prefix"]),
        "notice": notice,
        "now": datetime.now(UTC),
        "title": f"Delivery {delivery.id}",
    }
    return Page(request, viewer).render("delivery.html", **context)


@router.post("/deliveries/{delivery_id}/redeliver")
async def redeliver(request: Request, viewer: SignedIn, delivery_id: int) -> Response:
    viewer = acting_for_form(viewer, await form(request, viewer))
    owner = owner_of(viewer)
    if _id(str(delivery_id)) is None:
        raise errors.DeliveryNotFound(str(delivery_id))
    async with database(request).transaction() as conn:
        await webhooks.redeliver_async(conn, delivery_id, owner)
    return Page(request, viewer).redirect(f"/deliveries/{delivery_id}", notice="redelivered")
