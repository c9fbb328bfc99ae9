"""The brand API: ``/brands/{id}/webhooks[/...]``, in the brand webhooks envelope.

The owner is the brand id of the path, and the key must be that brand's.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from outbox_worker import webhooks
from outbox_worker.api.deps import DELETE_ROUTE, WebhookId, database, delete_owned, key_owner, secret_box
from outbox_worker.api.errors import COMMON_ERRORS, BrandNotFound, documented_errors
from outbox_worker.api.models import (
    BrandCreatedEnvelope,
    BrandListEnvelope,
    BrandWebhook,
    BrandWebhookCreated,
    BrandWebhookIn,
    ListInfo,
)


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


BrandOwner = Annotated[str, Depends(brand_owner)]

router = APIRouter(prefix="/brands/{brand_id}/webhooks", tags=["brand webhooks"])


def _brand_fields(hook: webhooks.Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "created_at": hook.created_at.timestamp(),
        "updated_at": hook.updated_at.timestamp(),
        "deleted_at": None,
        "brand": hook.owner_id,
        # A brand webhook has one topic; one made elsewhere (CLI, the vendor
        # API) for the same owner may have several.
        "topic": ",".join(hook.events),
        "url": hook.url,
        "tags": None,
        "type": "brand_webhook",
    }


@router.post("", responses=documented_errors(400, *COMMON_ERRORS, 404, 409, 413))
async def create_brand_webhook(
    request: Request, owner: BrandOwner, body: BrandWebhookIn
) -> BrandCreatedEnvelope:
    """Create a webhook of the brand for one topic.

    Deviation from the brand webhooks API this mirrors: `key` (the signing
    secret) appears in this response only; listings never return it.
    """
    async with database(request).transaction() as conn:
        created = await webhooks.create_webhook_async(
            conn, owner, body.url, [body.topic], box=secret_box(request)
        )
        hook = await webhooks.get_webhook_async(conn, owner, created.id)
    data = BrandWebhookCreated(**_brand_fields(hook), key=created.secret)
    return BrandCreatedEnvelope(code="OK", data=data)


@router.get("", responses=documented_errors(*COMMON_ERRORS, 404))
async def list_brand_webhooks(
    request: Request,
    owner: BrandOwner,
    topic: Annotated[str | None, Query(description="Only webhooks of this topic.")] = None,
) -> BrandListEnvelope:
    """All webhooks of the brand, optionally of one topic.

    Deviation from the brand webhooks API this mirrors: no `key` field (the
    secret is shown only when a webhook is created).
    """
    async with database(request).transaction() as conn:
        hooks = await webhooks.list_webhooks_async(conn, owner, topic)
    data = [BrandWebhook(**_brand_fields(h)) for h in hooks]
    return BrandListEnvelope(code="OK", data=data, info=ListInfo(count=len(data), total=len(data)))


@router.delete("/{webhook_id}", **DELETE_ROUTE)
async def delete_brand_webhook(request: Request, owner: BrandOwner, webhook_id: WebhookId) -> Response:
    """Delete a webhook of the brand, with its delivery logs."""
    return await delete_owned(request, owner, webhook_id)
