"""outbox_worker: a Postgres transactional-outbox webhook worker.

Emit in your own transaction with :func:`emit` (or ``select outbox.emit(...)``
from any language); run ``outbox-worker run`` to deliver signed webhooks at
least once to every matching webhook.
"""

from typing import TYPE_CHECKING, Any

from outbox_worker.emit import emit, emit_async
from outbox_worker.errors import (
    DeliveryNotFound,
    InvalidHeaders,
    InvalidIdempotencyKey,
    InvalidOrderingKey,
    InvalidOwnerId,
    InvalidPayload,
    InvalidURL,
    NotFound,
    OutboxError,
    PayloadOutOfRange,
    PayloadTooLarge,
    ReservedHeader,
    UnknownEventType,
    ValidationError,
    WebhookLimitReached,
    WebhookNotFound,
)
from outbox_worker.webhooks import Webhook, WebhookSecret

if TYPE_CHECKING:
    from outbox_worker.settings import Settings


def __getattr__(name: str) -> Any:
    # Settings is imported when first used, not with the package: `python -m
    # outbox_worker.settings` would otherwise find its module imported
    # already, and warn.
    if name == "Settings":
        from outbox_worker.settings import Settings

        return Settings
    raise AttributeError(f"module 'outbox_worker' has no attribute {name!r}")


__all__ = [
    "DeliveryNotFound",
    "InvalidHeaders",
    "InvalidIdempotencyKey",
    "InvalidOrderingKey",
    "InvalidOwnerId",
    "InvalidPayload",
    "InvalidURL",
    "NotFound",
    "OutboxError",
    "PayloadOutOfRange",
    "PayloadTooLarge",
    "ReservedHeader",
    "Settings",
    "UnknownEventType",
    "ValidationError",
    "Webhook",
    "WebhookLimitReached",
    "WebhookNotFound",
    "WebhookSecret",
    "emit",
    "emit_async",
]
