"""Webhook management: thin typed wrappers over the ``outbox.*_webhook`` SQL functions.

Every rule (URL policy, known event types, the per-owner limit, ownership,
header names and rate limits) is enforced by the SQL functions, so psql
users, other languages and these wrappers all get the same answers. Each
function has a sync form (psycopg or SQLAlchemy connection) and an
``_async`` form.

With a :class:`~outbox_worker.secretbox.SecretBox`, secrets and header
values are sealed here, before the database sees them; the checks on a
header value that sealing hides from the database are made here too.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from outbox_worker import db
from outbox_worker.errors import DeliveryNotFound, InvalidEventTypeName, InvalidHeaders, WebhookNotFound
from outbox_worker.secretbox import SecretBox, new_secret

# An event type or a pattern ("*", "order.*"), as outbox.event_patterns accepts
# it. No re.ASCII needed: the classes are spelled out, and \Z refuses a newline.
_EVENT_FILTER = re.compile(r"(?=.{1,100}\Z)(\*|[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*(\.\*)?)\Z")

# outbox.check_headers' rule for a plaintext value: printable ASCII, no
# surrounding spaces, at most 4096 characters.
_HEADER_VALUE = re.compile(r"[ -~]{1,4096}")


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook as every reader may see it: never its secret."""

    id: uuid.UUID
    owner_id: str
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_success_at: datetime | None = None
    failing_since: datetime | None = None
    rate_limit: Decimal | None = None  # requests per second over all workers; None: no limit
    header_names: list[str] = field(default_factory=list)  # custom headers; their values are never read back

    @classmethod
    def from_row(cls, row: db.Row) -> Webhook:
        return cls(**{name: row[name] for name in cls.__slots__ if name in row})


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """The answer of create and rotate: the only times a secret is shown."""

    id: uuid.UUID
    secret: str = field(repr=False)


def _webhook_id(value: uuid.UUID | str) -> uuid.UUID:
    # A malformed id cannot name anybody's webhook: same answer as a missing one.
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise WebhookNotFound(f"webhook {value} not found") from None


def _sealed(box: SecretBox | None) -> tuple[str | None, str | None]:
    """(plaintext, sealed) for a new secret; (None, None) lets SQL generate it."""
    if box is None:
        return None, None
    plain = new_secret()
    return plain, box.seal(plain)


def _secret(rows: list[db.Row], plain: str | None) -> WebhookSecret:
    return WebhookSecret(id=rows[0]["id"], secret=plain if plain is not None else rows[0]["secret"])


RateLimit = float | Decimal | int


def _seal_value(name: str, value: Any, box: SecretBox) -> Any:
    if not isinstance(value, str):
        return value  # the database refuses it, with the header's name
    if not _HEADER_VALUE.fullmatch(value) or value != value.strip():
        raise InvalidHeaders(
            f'invalid value of header "{name}": 1-4096 printable ASCII characters, no surrounding spaces'
        )
    return box.seal(value)


def _headers_json(headers: Mapping[str, str] | None, box: SecretBox | None) -> str | None:
    """The ``headers`` argument of the SQL functions: JSON, values sealed
    with ``box`` (names stay readable: listings show them)."""
    if headers is None:
        return None
    if box is not None:
        headers = {name: _seal_value(name, value, box) for name, value in headers.items()}
    return json.dumps(dict(headers), ensure_ascii=False)


def _create_params(
    owner_id: str,
    url: str,
    events: Sequence[str],
    sealed: str | None,
    rate_limit: RateLimit | None,
    headers: Mapping[str, str] | None,
    box: SecretBox | None,
) -> dict[str, Any]:
    return {
        "owner_id": owner_id,
        "url": url,
        "events": list(events),
        "sealed_secret": sealed,
        "rate_limit": rate_limit,
        "headers": _headers_json(headers, box),
    }


def _update_params(
    owner_id: str,
    webhook_id: uuid.UUID | str,
    url: str | None,
    events: Sequence[str] | None,
    enabled: bool | None,
    rate_limit: RateLimit | None,
    headers: Mapping[str, str] | None,
    box: SecretBox | None,
) -> dict[str, Any]:
    return {
        "owner_id": owner_id,
        "webhook_id": _webhook_id(webhook_id),
        "url": url,
        "events": list(events) if events is not None else None,
        "enabled": enabled,
        "rate_limit": rate_limit,
        "headers": _headers_json(headers, box),
    }


def _ids(owner_id: str, webhook_id: uuid.UUID | str) -> dict[str, Any]:
    return {"owner_id": owner_id, "webhook_id": _webhook_id(webhook_id)}


def _redeliver_params(delivery_id: int, owner_id: str | None = None) -> dict[str, Any]:
    if not isinstance(delivery_id, int) or delivery_id <= 0 or delivery_id >= 2**63:
        raise DeliveryNotFound(f"delivery {delivery_id} not found")
    return {"delivery_id": delivery_id, "owner_id": owner_id}


def _event_filter(event_type: str | None) -> dict[str, str | None]:
    """The ``event_type`` parameter of ``list_webhooks``, checked here before
    any SQL runs: ``outbox.event_patterns`` refuses the same, but by then a
    database connection is taken."""
    if event_type is not None and not _EVENT_FILTER.fullmatch(event_type):
        raise InvalidEventTypeName(
            'invalid event type: use at most 100 letters, digits, "_", "-" and dots, '
            'like "order.created" or "order.*"'
        )
    return {"event_type": event_type}


# -- sync ---------------------------------------------------------------------


def create_webhook(
    conn: db.SyncConnection,
    owner_id: str,
    url: str,
    events: Sequence[str],
    *,
    box: SecretBox | None = None,
    rate_limit: RateLimit | None = None,
    headers: Mapping[str, str] | None = None,
) -> WebhookSecret:
    """Register a webhook. With ``box`` the secret and the header values are
    sealed before they reach the database. ``rate_limit``: requests per
    second over all workers (None or 0: none). ``headers``: sent with every
    request (``{"Authorization": "Bearer ..."}``), never shown again."""
    plain, sealed = _sealed(box)
    params = _create_params(owner_id, url, events, sealed, rate_limit, headers, box)
    return _secret(db.fetch(conn, "create_webhook", params), plain)


def update_webhook(
    conn: db.SyncConnection,
    owner_id: str,
    webhook_id: uuid.UUID | str,
    *,
    url: str | None = None,
    events: Sequence[str] | None = None,
    enabled: bool | None = None,
    rate_limit: RateLimit | None = None,
    headers: Mapping[str, str] | None = None,
    box: SecretBox | None = None,
) -> Webhook:
    """Change what is given; None leaves it. ``rate_limit=0`` removes the
    limit; ``headers`` replace the whole set (``{}`` removes them)."""
    params = _update_params(owner_id, webhook_id, url, events, enabled, rate_limit, headers, box)
    return Webhook.from_row(db.fetch(conn, "update_webhook", params)[0])


def delete_webhook(conn: db.SyncConnection, owner_id: str, webhook_id: uuid.UUID | str) -> None:
    db.fetch(conn, "delete_webhook", _ids(owner_id, webhook_id))


def list_webhooks(conn: db.SyncConnection, owner_id: str, event_type: str | None = None) -> list[Webhook]:
    rows = db.fetch(conn, "list_webhooks", {"owner_id": owner_id, **_event_filter(event_type)})
    return [Webhook.from_row(r) for r in rows]


def list_all_webhooks(conn: db.SyncConnection, event_type: str | None = None) -> list[Webhook]:
    """Every owner's webhooks, for operators (the CLI without ``--owner``)."""
    return [Webhook.from_row(r) for r in db.fetch(conn, "list_all_webhooks", {"event_type": event_type})]


def get_webhook(conn: db.SyncConnection, owner_id: str, webhook_id: uuid.UUID | str) -> Webhook:
    return Webhook.from_row(db.fetch(conn, "get_webhook", _ids(owner_id, webhook_id))[0])


def rotate_webhook_secret(
    conn: db.SyncConnection, owner_id: str, webhook_id: uuid.UUID | str, *, box: SecretBox | None = None
) -> WebhookSecret:
    plain, sealed = _sealed(box)
    params = {**_ids(owner_id, webhook_id), "sealed_secret": sealed}
    return _secret(db.fetch(conn, "rotate_webhook_secret", params), plain)


def send_test_event(conn: db.SyncConnection, owner_id: str, webhook_id: uuid.UUID | str) -> int:
    """Queue one signed ``webhook.test`` event for this webhook alone; returns the delivery id."""
    return int(db.fetch(conn, "send_test_event", _ids(owner_id, webhook_id))[0]["id"])


def redeliver(conn: db.SyncConnection, delivery_id: int, owner_id: str) -> int:
    """Start a new round of attempts for one delivery of ``owner_id``'s webhooks."""
    return int(db.fetch(conn, "redeliver", _redeliver_params(delivery_id, owner_id))[0]["id"])


def redeliver_any_owner(conn: db.SyncConnection, delivery_id: int) -> int:
    """Operators: :func:`redeliver` for a delivery of any owner's webhook."""
    return int(db.fetch(conn, "redeliver_any_owner", _redeliver_params(delivery_id))[0]["id"])


def expire_previous_secret(conn: db.SyncConnection, owner_id: str, webhook_id: uuid.UUID | str) -> None:
    """End a rotation's overlap now: the previous secret stops signing and is erased."""
    db.fetch(conn, "expire_previous_secret", _ids(owner_id, webhook_id))


def replay_failed(
    conn: db.SyncConnection, owner_id: str, webhook_id: uuid.UUID | str, since: datetime
) -> int:
    params = {**_ids(owner_id, webhook_id), "since": since}
    return int(db.fetch(conn, "replay_failed", params)[0]["count"])


def add_event_type(conn: db.SyncConnection, name: str, description: str = "") -> None:
    db.fetch(conn, "add_event_type", {"name": name, "description": description})


# -- async --------------------------------------------------------------------


async def create_webhook_async(
    conn: db.AsyncConnection,
    owner_id: str,
    url: str,
    events: Sequence[str],
    *,
    box: SecretBox | None = None,
    rate_limit: RateLimit | None = None,
    headers: Mapping[str, str] | None = None,
) -> WebhookSecret:
    plain, sealed = _sealed(box)
    params = _create_params(owner_id, url, events, sealed, rate_limit, headers, box)
    return _secret(await db.fetch_async(conn, "create_webhook", params), plain)


async def update_webhook_async(
    conn: db.AsyncConnection,
    owner_id: str,
    webhook_id: uuid.UUID | str,
    *,
    url: str | None = None,
    events: Sequence[str] | None = None,
    enabled: bool | None = None,
    rate_limit: RateLimit | None = None,
    headers: Mapping[str, str] | None = None,
    box: SecretBox | None = None,
) -> Webhook:
    params = _update_params(owner_id, webhook_id, url, events, enabled, rate_limit, headers, box)
    return Webhook.from_row((await db.fetch_async(conn, "update_webhook", params))[0])


async def delete_webhook_async(conn: db.AsyncConnection, owner_id: str, webhook_id: uuid.UUID | str) -> None:
    await db.fetch_async(conn, "delete_webhook", _ids(owner_id, webhook_id))


async def list_webhooks_async(
    conn: db.AsyncConnection, owner_id: str, event_type: str | None = None
) -> list[Webhook]:
    rows = await db.fetch_async(conn, "list_webhooks", {"owner_id": owner_id, **_event_filter(event_type)})
    return [Webhook.from_row(r) for r in rows]


async def list_all_webhooks_async(conn: db.AsyncConnection, event_type: str | None = None) -> list[Webhook]:
    rows = await db.fetch_async(conn, "list_all_webhooks", {"event_type": event_type})
    return [Webhook.from_row(r) for r in rows]


async def get_webhook_async(conn: db.AsyncConnection, owner_id: str, webhook_id: uuid.UUID | str) -> Webhook:
    return Webhook.from_row((await db.fetch_async(conn, "get_webhook", _ids(owner_id, webhook_id)))[0])


async def rotate_webhook_secret_async(
    conn: db.AsyncConnection, owner_id: str, webhook_id: uuid.UUID | str, *, box: SecretBox | None = None
) -> WebhookSecret:
    plain, sealed = _sealed(box)
    params = {**_ids(owner_id, webhook_id), "sealed_secret": sealed}
    return _secret(await db.fetch_async(conn, "rotate_webhook_secret", params), plain)


async def send_test_event_async(conn: db.AsyncConnection, owner_id: str, webhook_id: uuid.UUID | str) -> int:
    rows = await db.fetch_async(conn, "send_test_event", _ids(owner_id, webhook_id))
    return int(rows[0]["id"])


async def redeliver_async(conn: db.AsyncConnection, delivery_id: int, owner_id: str) -> int:
    rows = await db.fetch_async(conn, "redeliver", _redeliver_params(delivery_id, owner_id))
    return int(rows[0]["id"])


async def redeliver_any_owner_async(conn: db.AsyncConnection, delivery_id: int) -> int:
    rows = await db.fetch_async(conn, "redeliver_any_owner", _redeliver_params(delivery_id))
    return int(rows[0]["id"])


async def expire_previous_secret_async(
    conn: db.AsyncConnection, owner_id: str, webhook_id: uuid.UUID | str
) -> None:
    await db.fetch_async(conn, "expire_previous_secret", _ids(owner_id, webhook_id))


async def replay_failed_async(
    conn: db.AsyncConnection, owner_id: str, webhook_id: uuid.UUID | str, since: datetime
) -> int:
    params = {**_ids(owner_id, webhook_id), "since": since}
    return int((await db.fetch_async(conn, "replay_failed", params))[0]["count"])
