"""The vendor API's delivery log: ``/api/vendor/deliveries[/...]``, over all the key owner's webhooks.

A delivery of another owner answers 404, exactly as one that does not exist.
The webhook-scoped routes (``/api/vendor/webhooks/{id}/deliveries``) page and
redeliver through the helpers here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from outbox_worker import db, logs, webhooks
from outbox_worker.api.deps import database, key_owner
from outbox_worker.api.errors import COMMON_ERRORS, documented_errors
from outbox_worker.api.models import (
    MAX_BIGINT,
    MAX_PAGE_SIZE,
    DeliveryDetail,
    DeliveryOut,
    DeliveryPage,
    IsoDatetime,
)
from outbox_worker.signing import event_body, load_payload

VendorOwner = Annotated[str, Depends(key_owner)]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Delivery id.")]
Status = Literal["pending", "delivered", "failed"]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Deliveries per page.")]
Cursor = Annotated[int | None, Query(ge=1, le=MAX_BIGINT, description="The `next` of the previous page.")]

_log = logs.get_logger(component="api")

router = APIRouter(prefix="/api/vendor/deliveries", tags=["vendor deliveries"])


def utc(moment: datetime) -> datetime:
    """A time without an offset is UTC, whatever the database session's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def delivery_page(
    request: Request,
    owner: str,
    *,
    webhook_id: uuid.UUID | None,
    limit: int,
    cursor: int | None,
    status: Status | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    event_type: str | None = None,
) -> DeliveryPage:
    """A keyset page of the owner's deliveries, newest first (404 for another owner's webhook)."""
    params = {
        "owner_id": owner,
        "webhook_id": webhook_id,
        "before_id": cursor,
        "max_rows": limit + 1,  # one more tells whether a next page exists
        "status": status,
        "created_since": since and utc(since),
        "created_until": until and utc(until),
        "event_type": event_type,
    }
    async with database(request).transaction() as conn:
        rows = await db.fetch_async(conn, "list_deliveries", params)
    page = [DeliveryOut.from_row(r) for r in rows[:limit]]
    return DeliveryPage(data=page, next=page[-1].id if len(rows) > limit else None)


def request_body(stored: db.Row) -> str | None:
    """The exact body a delivery POSTs, from a ``delivery_body`` row (None if the payload cannot be read)."""
    # Not stored until the first attempt is logged: encoded as the worker
    # encodes it (deterministic, so the same bytes).
    body = stored["body"]
    if body is None:
        data = load_payload(stored["data"])
        body = event_body(stored["event_type"], data, stored["created_at"], _log)
    if isinstance(body, bytes | memoryview):
        return bytes(body).decode("utf-8", "replace")
    return None


async def redeliver_owned(
    request: Request, owner: str, delivery_id: int, webhook_id: uuid.UUID | None = None
) -> DeliveryOut:
    """A new round of attempts for the owner's delivery (of ``webhook_id``, when given)."""
    ids = {"owner_id": owner, "webhook_id": webhook_id, "delivery_id": delivery_id}
    async with database(request).transaction() as conn:
        # outbox.redeliver checks the owner; this also ties the delivery to the webhook of the path.
        await db.fetch_async(conn, "get_delivery", ids)
        await webhooks.redeliver_async(conn, delivery_id, owner)
        row = (await db.fetch_async(conn, "get_delivery", ids))[0]
    return DeliveryOut.from_row(row)


@router.get("", responses=documented_errors(*COMMON_ERRORS, 404))
async def list_deliveries(
    request: Request,
    owner: VendorOwner,
    webhook_id: Annotated[uuid.UUID | None, Query(description="Only this webhook's deliveries.")] = None,
    status: Annotated[Status | None, Query(description="Only deliveries in this state.")] = None,
    since: Annotated[
        IsoDatetime | None,
        Query(description="Created at or after this time (ISO 8601; UTC without an offset)."),
    ] = None,
    until: Annotated[IsoDatetime | None, Query(description="Created before this time.")] = None,
    event_type: Annotated[
        str | None, Query(max_length=100, description="Only deliveries of this event type.")
    ] = None,
    limit: PageSize = 20,
    cursor: Cursor = None,
) -> DeliveryPage:
    """The delivery log of all the key owner's webhooks, newest first, each delivery with its attempts."""
    return await delivery_page(
        request,
        owner,
        webhook_id=webhook_id,
        limit=limit,
        cursor=cursor,
        status=status,
        since=since,
        until=until,
        event_type=event_type,
    )


@router.get("/{delivery_id}", responses=documented_errors(*COMMON_ERRORS, 404))
async def get_delivery(
    request: Request,
    owner: VendorOwner,
    delivery_id: DeliveryId,
    include: Annotated[
        Literal["body"] | None, Query(description="`body`: also the exact request body POSTed.")
    ] = None,
) -> DeliveryDetail:
    """One delivery with its attempts: status, duration, error class and the first 4 KiB of each answer."""
    ids = {"owner_id": owner, "webhook_id": None, "delivery_id": delivery_id}
    async with database(request).transaction() as conn:
        row = (await db.fetch_async(conn, "get_delivery", ids))[0]
        stored = (await db.fetch_async(conn, "delivery_body", ids))[0] if include == "body" else None
    detail = DeliveryDetail(**DeliveryOut.from_row(row).model_dump())
    if stored is not None:
        detail.request_body = request_body(stored)
    return detail


@router.post("/{delivery_id}/redeliver", status_code=202, responses=documented_errors(*COMMON_ERRORS, 404))
async def redeliver(request: Request, owner: VendorOwner, delivery_id: DeliveryId) -> DeliveryOut:
    """Queue a new round of attempts for one delivery (same `webhook-id`, so receivers can deduplicate)."""
    return await redeliver_owned(request, owner, delivery_id)
