"""API keys of the management HTTP API: thin wrappers over the ``outbox.*api_key*`` SQL functions.

A key is ``<prefix><64 hex digits>`` (32 random bytes from the database).
Only its SHA-256 is stored, and only the hash travels to the database when a
key is checked, so neither the table nor the server's statement log holds a
usable key. Python never compares keys itself: the database looks the hash
up, and an index lookup by the hash of a 256-bit random value tells a timing
attacker nothing about any stored key.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from outbox_worker import db
from outbox_worker.errors import ApiKeyNotFound

DEFAULT_PREFIX = "brut_"
# Real keys are at most 32 + 64 characters; anything much longer is not one
# of ours and is not worth hashing.
_MAX_KEY_LENGTH = 256


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listings show it: never the key nor its hash."""

    id: uuid.UUID
    owner_id: str
    display_prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: db.Row) -> ApiKey:
        return cls(**{name: row[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class NewApiKey:
    """The answer of create: the only time the key is shown."""

    id: uuid.UUID
    key: str = field(repr=False)


def key_hash(key: str) -> bytes:
    """The SHA-256 the database stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def _key_id(value: uuid.UUID | str) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise ApiKeyNotFound(f"API key {value} not found") from None


def _owner_params(key: str) -> dict[str, Any] | None:
    # Keys are ASCII; anything else cannot match, and skipping it keeps odd
    # header bytes (or lone surrogates from Python callers) away from the driver.
    if not key or len(key) > _MAX_KEY_LENGTH or not key.isascii():
        return None
    return {"key_hash": key_hash(key)}


def _revoke_params(key_id: uuid.UUID | str, owner_id: str | None = None) -> dict[str, Any]:
    return {"key_id": _key_id(key_id), "owner_id": owner_id}


def _new_key(rows: list[db.Row]) -> NewApiKey:
    return NewApiKey(id=rows[0]["id"], key=rows[0]["key"])


# -- sync ---------------------------------------------------------------------


def _create_params(owner_id: str, prefix: str, operator: bool) -> dict[str, Any]:
    return {"owner_id": owner_id, "prefix": prefix, "operator": operator}


def create_api_key(
    conn: db.SyncConnection, owner_id: str, prefix: str = DEFAULT_PREFIX, *, operator: bool = False
) -> NewApiKey:
    """Issue a key for ``owner_id``; an ``operator`` key also shows the
    console every owner (the HTTP API still acts for ``owner_id``)."""
    return _new_key(db.fetch(conn, "create_api_key", _create_params(owner_id, prefix, operator)))


def api_key_owner(conn: db.SyncConnection, key: str) -> str | None:
    """The owner ``key`` acts for, or None for an unknown or revoked key."""
    params = _owner_params(key)
    if params is None:
        return None
    owner: str | None = db.fetch(conn, "api_key_owner", params)[0]["owner_id"]
    return owner


def list_api_keys(conn: db.SyncConnection, owner_id: str) -> list[ApiKey]:
    return [ApiKey.from_row(r) for r in db.fetch(conn, "list_api_keys", {"owner_id": owner_id})]


def revoke_api_key(conn: db.SyncConnection, key_id: uuid.UUID | str, owner_id: str) -> ApiKey:
    """Revoke one of ``owner_id``'s keys (idempotent)."""
    return ApiKey.from_row(db.fetch(conn, "revoke_api_key", _revoke_params(key_id, owner_id))[0])


def revoke_api_key_any_owner(conn: db.SyncConnection, key_id: uuid.UUID | str) -> ApiKey:
    """Operators: :func:`revoke_api_key` for a key of any owner."""
    return ApiKey.from_row(db.fetch(conn, "revoke_api_key_any_owner", _revoke_params(key_id))[0])


# -- async --------------------------------------------------------------------


async def create_api_key_async(
    conn: db.AsyncConnection, owner_id: str, prefix: str = DEFAULT_PREFIX, *, operator: bool = False
) -> NewApiKey:
    rows = await db.fetch_async(conn, "create_api_key", _create_params(owner_id, prefix, operator))
    return _new_key(rows)


async def api_key_owner_async(conn: db.AsyncConnection, key: str) -> str | None:
    params = _owner_params(key)
    if params is None:
        return None
    owner: str | None = (await db.fetch_async(conn, "api_key_owner", params))[0]["owner_id"]
    return owner


async def list_api_keys_async(conn: db.AsyncConnection, owner_id: str) -> list[ApiKey]:
    rows = await db.fetch_async(conn, "list_api_keys", {"owner_id": owner_id})
    return [ApiKey.from_row(r) for r in rows]


async def revoke_api_key_async(conn: db.AsyncConnection, key_id: uuid.UUID | str, owner_id: str) -> ApiKey:
    rows = await db.fetch_async(conn, "revoke_api_key", _revoke_params(key_id, owner_id))
    return ApiKey.from_row(rows[0])


async def revoke_api_key_any_owner_async(conn: db.AsyncConnection, key_id: uuid.UUID | str) -> ApiKey:
    rows = await db.fetch_async(conn, "revoke_api_key_any_owner", _revoke_params(key_id))
    return ApiKey.from_row(rows[0])
