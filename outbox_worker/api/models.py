"""The request and response bodies of the management API, and the limits a request must keep to.

The error body is in :mod:`outbox_worker.api.errors`, with the handlers that send it.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from outbox_worker import db, webhooks

MAX_PAGE_SIZE = 100
# Webhook bodies are a URL and a few event names; nothing legitimate is near this.
MAX_BODY_BYTES = 64 * 1024
MAX_BIGINT = 2**63 - 1
# What a delivery's attempts show of each answer.
RESPONSE_PREVIEW_BYTES = 4096


def _iso_8601(value: Any) -> Any:
    # pydantic also reads a number as seconds since the epoch; the document
    # says an ISO 8601 string, and "0.5" is not one.
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9.eE+-]+\s*", value):
        raise ValueError("expected an ISO 8601 date and time, e.g. 2026-12-01T00:00:00Z")
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_8601)]

_RATE_LIMIT = "Most requests per second to this webhook, over all workers (0.01 to 10000)."
_HEADERS = (
    'Sent with every request, e.g. `{"Authorization": "Bearer ..."}`: at most 20, printable ASCII values. '
    "Stored sealed and never shown again (responses list the names). The signature headers, "
    "`webhook-*`, `Host`, `Content-Type`, `-Length`, `-Encoding`, `User-Agent`, `traceparent` "
    "and hop-by-hop headers are reserved."
)

# -- the vendor API -----------------------------------------------------------


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
    rate_limit: float | None = Field(
        None, strict=True, allow_inf_nan=False, description=f"{_RATE_LIMIT} Null: no limit."
    )
    headers: dict[str, str] | None = Field(None, description=_HEADERS)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, description="New receiver URL; omitted or null = unchanged.")
    events: list[str] | None = Field(
        None, description="Replaces the subscription; omitted or null = unchanged."
    )
    status: Literal["active", "disabled"] | None = Field(
        None, description="`disabled` stops deliveries (queued ones fail); `active` resumes."
    )
    rate_limit: float | None = Field(
        None,
        strict=True,
        allow_inf_nan=False,
        description=f"{_RATE_LIMIT} 0 removes it; omitted or null = unchanged.",
    )
    headers: dict[str, str] | None = Field(
        None,
        description=f"Replaces all the headers (`{{}}` removes them); omitted or null: unchanged. {_HEADERS}",
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
    rate_limit: float | None = Field(description="Requests per second over all workers; null: no limit.")
    header_names: list[str] = Field(
        description="Names of the webhook's own headers; their values are never shown."
    )

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
    response_body: str | None = Field(description="The first 4 KiB of the receiver's response body.")

    @field_validator("response_body")
    @classmethod
    def _preview(cls, body: str | None) -> str | None:
        # The worker keeps OUTBOX_MAX_RESPONSE_BYTES of it, which may be more.
        if body is None or len(body) <= RESPONSE_PREVIEW_BYTES // 4:
            return body
        return body.encode()[:RESPONSE_PREVIEW_BYTES].decode(errors="ignore")


class DeliveryOut(BaseModel):
    id: int
    webhook_id: uuid.UUID
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
            webhook_id=row["webhook_id"],
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


class DeliveryDetail(DeliveryOut):
    request_body: str | None = Field(
        None,
        description="With `include=body`: the exact body POSTed (the same on every attempt); "
        "null without it, or when the event's payload cannot be read.",
    )


class DeliveryPage(BaseModel):
    data: list[DeliveryOut] = Field(description="Deliveries, newest first.")
    next: int | None = Field(description="Pass as `cursor` to get the next page; null on the last page.")


class ReplayOut(BaseModel):
    webhook_id: uuid.UUID
    since: datetime
    requeued: int = Field(description="Failed deliveries queued again.")


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
        "rate_limit": None if hook.rate_limit is None else float(hook.rate_limit),
        "header_names": hook.header_names,
    }


# -- the brand API ------------------------------------------------------------


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
