"""Exceptions raised by outbox_worker.

The SQL functions raise SQLSTATEs of class ``OW`` (listed at the top of
``sql/schema.sql``); :func:`from_sqlstate` maps them to the classes below,
so callers catch one Python type whatever driver they use.
"""

from __future__ import annotations


class OutboxError(Exception):
    """Base class of every error outbox_worker raises on purpose."""

    sqlstate: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class ValidationError(OutboxError, ValueError):
    """The input was refused; nothing was written."""


class InvalidOwnerId(ValidationError):
    sqlstate = "OW001"


class UnknownEventType(ValidationError):
    sqlstate = "OW002"


class InvalidURL(ValidationError):
    sqlstate = "OW003"


class InvalidPayload(ValidationError):
    sqlstate = "OW006"


class PayloadTooLarge(InvalidPayload):
    sqlstate = "OW007"


class PayloadOutOfRange(InvalidPayload):
    """Nested deeper than 100 objects or arrays, or a number beyond +/-1e308:
    PostgreSQL stores it, but receivers' JSON parsers refuse it."""

    sqlstate = "OW012"


class InvalidEventTypeName(ValidationError):
    sqlstate = "OW009"


class InvalidSecret(ValidationError):
    sqlstate = "OW010"


class SecretUnavailable(OutboxError):
    """A stored secret is sealed and no configured key opens it."""


class WebhookLimitReached(OutboxError):
    sqlstate = "OW004"


class NotFound(OutboxError, LookupError):
    """The object does not exist, or belongs to another owner (never told apart)."""


class WebhookNotFound(NotFound):
    sqlstate = "OW005"


class DeliveryNotFound(NotFound):
    sqlstate = "OW008"


class ApiKeyNotFound(NotFound):
    sqlstate = "OW020"


class InvalidApiKeyPrefix(ValidationError):
    sqlstate = "OW021"


class NoEventTypes(ValidationError):
    """A webhook must subscribe to at least one event type or pattern."""

    sqlstate = "OW013"


class UnknownSetting(ValidationError):
    """``outbox.set_config`` was given a name that is not a column of ``outbox.config``."""

    sqlstate = "OW014"


class TracingUnavailable(OutboxError):
    """The ``OTEL_*`` variables ask for traces the worker cannot produce (the
    ``otel`` extra missing, an exporter or protocol it does not have)."""


class SchemaNotMigrated(OutboxError):
    """The database has no ``outbox`` schema, or an older one than this code needs."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "the database has no outbox schema, or an older one: run `outbox-worker migrate`"
            + (f" ({detail})" if detail else "")
        )


class InvalidOrderingKey(ValidationError):
    sqlstate = "OW030"


class InvalidIdempotencyKey(ValidationError):
    sqlstate = "OW031"


class InvalidHeaders(ValidationError):
    """Webhook headers that are not an object of header names to printable
    ASCII values (at most 20, values up to 4096 characters)."""

    sqlstate = "OW033"


class ReservedHeader(InvalidHeaders):
    """A header the worker sets itself: the signature headers, ``webhook-*``, ``Host``,
    ``Content-Type``, ``-Length``, ``-Encoding``, ``User-Agent``, ``traceparent``, hop-by-hop ones."""

    sqlstate = "OW032"


class InvalidRateLimit(ValidationError):
    sqlstate = "OW034"


class WebhookDisabled(ValidationError):
    """A test event was asked of a disabled webhook."""

    sqlstate = "OW035"


class FixedId(OutboxError):
    """An UPDATE named the id of an event, webhook or delivery (their children refer to it)."""

    sqlstate = "OW011"


_BY_SQLSTATE: dict[str, type[OutboxError]] = {
    cls.sqlstate: cls
    for cls in (
        InvalidOwnerId,
        UnknownEventType,
        InvalidURL,
        WebhookLimitReached,
        WebhookNotFound,
        InvalidPayload,
        PayloadTooLarge,
        PayloadOutOfRange,
        DeliveryNotFound,
        InvalidEventTypeName,
        InvalidSecret,
        ApiKeyNotFound,
        InvalidApiKeyPrefix,
        NoEventTypes,
        UnknownSetting,
        InvalidOrderingKey,
        InvalidIdempotencyKey,
        ReservedHeader,
        InvalidHeaders,
        InvalidRateLimit,
        WebhookDisabled,
        FixedId,
    )
    if cls.sqlstate
}


# Postgres' own refusals that are really about the payload.
_BY_SQLSTATE["22P05"] = InvalidPayload  # \u0000 in a string: jsonb cannot store it


# An object of the outbox schema is missing: invalid schema name, undefined
# table, undefined function.
_MISSING_OBJECT = frozenset({"3F000", "42P01", "42883"})


def from_sqlstate(sqlstate: str | None, message: str, hint: str | None = None) -> OutboxError | None:
    """The OutboxError for an ``OW`` SQLSTATE (and a few payload errors, and
    a missing outbox schema), or None."""
    if sqlstate in _MISSING_OBJECT and "outbox" in message:
        return SchemaNotMigrated(message)
    cls = _BY_SQLSTATE.get(sqlstate or "")
    return cls(message, hint=hint) if cls else None
