"""The vendor API: ``/api/vendor/webhooks[/...]``, as in the vendor docs.

The owner is the one the ``X-Api-Key`` belongs to.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from outbox_worker import db, webhooks
from outbox_worker.api.deliveries import (
    Cursor,
    DeliveryId,
    PageSize,
    VendorOwner,
    delivery_page,
    redeliver_owned,
    utc,
)
from outbox_worker.api.deps import DELETE_ROUTE, WebhookId, database, delete_owned, secret_box
from outbox_worker.api.errors import COMMON_ERRORS, documented_errors
from outbox_worker.api.models import (
    DeliveryOut,
    DeliveryPage,
    IsoDatetime,
    ReplayOut,
    SecretOut,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
    WebhookUpdate,
)

router = APIRouter(prefix="/api/vendor/webhooks", tags=["vendor webhooks"])


@router.post("", status_code=201, responses=documented_errors(400, *COMMON_ERRORS, 409, 413))
async def create_webhook(request: Request, owner: VendorOwner, body: WebhookCreate) -> WebhookCreated:
    """Register a webhook. The response carries its signing secret, shown this once."""
    async with database(request).transaction() as conn:
        created = await webhooks.create_webhook_async(
            conn, owner, body.url, body.events, box=secret_box(request),
            rate_limit=body.rate_limit, headers=body.headers,
        )  # fmt: skip
        hook = await webhooks.get_webhook_async(conn, owner, created.id)
    return WebhookCreated.from_parts(hook, created.secret)


@router.get("", responses=documented_errors(*COMMON_ERRORS))
async def list_webhooks(
    request: Request,
    owner: VendorOwner,
    event: Annotated[str | None, Query(description="Only webhooks this event type reaches.")] = None,
) -> WebhookList:
    """List the key owner's webhooks (never their secrets)."""
    async with database(request).transaction() as conn:
        hooks = await webhooks.list_webhooks_async(conn, owner, event)
    return WebhookList(data=[WebhookOut.from_webhook(h) for h in hooks])


@router.get("/{webhook_id}", responses=documented_errors(*COMMON_ERRORS, 404))
async def get_webhook(request: Request, owner: VendorOwner, webhook_id: WebhookId) -> WebhookOut:
    """One webhook (never its secret)."""
    async with database(request).transaction() as conn:
        hook = await webhooks.get_webhook_async(conn, owner, webhook_id)
    return WebhookOut.from_webhook(hook)


@router.patch("/{webhook_id}", responses=documented_errors(400, *COMMON_ERRORS, 404, 413))
async def update_webhook(
    request: Request, owner: VendorOwner, webhook_id: WebhookId, body: WebhookUpdate
) -> WebhookOut:
    """Update the URL, events, status, rate limit or headers of a webhook; omitted fields are unchanged."""
    enabled = None if body.status is None else body.status == "active"
    async with database(request).transaction() as conn:
        hook = await webhooks.update_webhook_async(
            conn, owner, webhook_id, url=body.url, events=body.events, enabled=enabled,
            rate_limit=body.rate_limit, headers=body.headers, box=secret_box(request),
        )  # fmt: skip
    return WebhookOut.from_webhook(hook)


@router.delete("/{webhook_id}", **DELETE_ROUTE)
async def delete_webhook(request: Request, owner: VendorOwner, webhook_id: WebhookId) -> Response:
    """Delete a webhook and all its delivery logs."""
    return await delete_owned(request, owner, webhook_id)


@router.post("/{webhook_id}/rotate-secret", responses=documented_errors(*COMMON_ERRORS, 404))
async def rotate_secret(request: Request, owner: VendorOwner, webhook_id: WebhookId) -> SecretOut:
    """Issue a new signing secret, shown this once; the old one keeps signing for the overlap window."""
    async with database(request).transaction() as conn:
        rotated = await webhooks.rotate_webhook_secret_async(conn, owner, webhook_id, box=secret_box(request))
    return SecretOut(id=rotated.id, secret=rotated.secret)


@router.post("/{webhook_id}/test", status_code=202, responses=documented_errors(*COMMON_ERRORS, 404))
async def send_test_event(request: Request, owner: VendorOwner, webhook_id: WebhookId) -> DeliveryOut:
    """Send one signed `webhook.test` event to this webhook alone; the answer is its delivery
    (422 for a disabled webhook)."""
    async with database(request).transaction() as conn:
        delivery_id = await webhooks.send_test_event_async(conn, owner, webhook_id)
        ids = {"owner_id": owner, "webhook_id": webhook_id, "delivery_id": delivery_id}
        row = (await db.fetch_async(conn, "get_delivery", ids))[0]
    return DeliveryOut.from_row(row)


@router.post("/{webhook_id}/replay", status_code=202, responses=documented_errors(*COMMON_ERRORS, 404))
async def replay_failed(
    request: Request,
    owner: VendorOwner,
    webhook_id: WebhookId,
    since: Annotated[
        IsoDatetime, Query(description="Failed at or after this time (ISO 8601; UTC without an offset).")
    ],
) -> ReplayOut:
    """Queue again every delivery of this webhook that failed since a time."""
    moment = utc(since)
    async with database(request).transaction() as conn:
        count = await webhooks.replay_failed_async(conn, owner, webhook_id, moment)
    return ReplayOut(webhook_id=webhook_id, since=moment, requeued=count)


@router.get("/{webhook_id}/deliveries", responses=documented_errors(*COMMON_ERRORS, 404))
async def list_deliveries(
    request: Request, owner: VendorOwner, webhook_id: WebhookId, limit: PageSize = 20, cursor: Cursor = None
) -> DeliveryPage:
    """The webhook's delivery log, newest first, each delivery with its attempts
    (`/api/vendor/deliveries` filters the whole log)."""
    return await delivery_page(request, owner, webhook_id=webhook_id, limit=limit, cursor=cursor)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    responses=documented_errors(*COMMON_ERRORS, 404),
)
async def redeliver(
    request: Request, owner: VendorOwner, webhook_id: WebhookId, delivery_id: DeliveryId
) -> DeliveryOut:
    """Queue a new round of attempts for one delivery (same `webhook-id`, so receivers can deduplicate)."""
    return await redeliver_owned(request, owner, delivery_id, webhook_id)
