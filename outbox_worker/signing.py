"""The bytes we POST and the signatures on them.

Body: compact JSON ``{"event","data","timestamp"}``, fixed once at dispatch.
Keys and numbers are written the way JavaScript's ``JSON.stringify`` writes
them (integer-like keys first, ``20.0`` as ``20``), so a receiver that
re-serialises the parsed body, as the vendor API's Node example does, gets the
same bytes back. Where JavaScript cannot (integers beyond 2**53, floats it
prints in exponent form), receivers must verify the raw body.

Signatures: the configured signature header (``OUTBOX_SIGNATURE_HEADER``, by
default the vendor API's ``X-Brutlers-Signature``) is the hex HMAC-SHA256 of the body keyed
with the secret string itself (the vendor API's example); the Standard Webhooks
``webhook-signature`` is ``v1,<base64 HMAC>`` of ``id.timestamp.body`` keyed
with the base64-decoded part of ``whsec_...``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

_MAX_SAFE_INTEGER = 2**53 - 1
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _is_array_index(key: str) -> bool:
    # JavaScript orders "canonical numeric" property keys (array indices)
    # before all others, ascending.
    # (str.isdigit also accepts "¹" and other non-ASCII digits.)
    return key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") and int(key) < 2**32 - 1


def _js_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if any(_is_array_index(k) for k, _ in pairs):
        indices = sorted((p for p in pairs if _is_array_index(p[0])), key=lambda p: int(p[0]))
        pairs = indices + [p for p in pairs if not _is_array_index(p[0])]
    return dict(pairs)


_INFINITIES = (math.inf, -math.inf)


def _js_float(text: str) -> float | int:
    value = float(text)
    # JSON.stringify(20.0) is "20": an integral float within JS's exact range
    # becomes an int so that Python writes it the same way.
    if value.is_integer() and abs(value) <= _MAX_SAFE_INTEGER:
        return int(value)
    if value in _INFINITIES:
        raise _OutOfRange
    return value


# A key that JavaScript would move to the front, as it appears in JSON text.
# A match inside a string value only costs the slower parse, never a wrong one.
_INDEX_KEY = re.compile(rb'"(?:0|[1-9][0-9]*)"\s*:')

# Below this magnitude Python writes a float in exponent form with two
# digits ("1.5e-05") and orjson in fixed or short form ("0.000015", "1e-7").
# Every other float, and every string and integer orjson can hold, comes
# out of both byte for byte (tests/integration/test_signing_properties.py).
_ORJSON_FLOAT_MIN = 1e-4


class _TinyFloat(Exception):
    pass


class _OutOfRange(ValueError):
    pass


class UnreadablePayload:
    """What :func:`load_payload` returns for stored JSON this process cannot
    read: an integer beyond Python's 4,300-digit parse, nesting beyond its
    recursion limit, a number beyond a double's range. Emit refuses such
    payloads (``OW012``); an event stored before that check fails its own
    deliveries (error class ``invalid_payload``) and holds back no other."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _unreadable(exc: Exception) -> UnreadablePayload:
    if isinstance(exc, RecursionError):
        why = "nested too deep"
    elif isinstance(exc, _OutOfRange):
        why = "a number beyond the range of a double"
    elif "integer string conversion" in str(exc):
        why = "an integer of more than 4,300 digits"
    else:
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
    return UnreadablePayload(
        f"payload cannot be read: {why}; receivers' JSON parsers would refuse it too "
        "(emit refuses such payloads, OW012)"
    )


def _js_float_for_orjson(text: str) -> float | int:
    value = _js_float(text)
    if isinstance(value, float) and value and abs(value) < _ORJSON_FLOAT_MIN:
        raise _TinyFloat
    return value


class JsonObject(dict[str, Any]):
    """A payload :func:`load_payload` parsed whose every float orjson writes
    as the standard encoder does, so :func:`encode_body` may use orjson
    (7-14x faster: 188 -> 14 us for a 15 KB payload) for the same bytes."""


# Built once: json.loads with any keyword builds a decoder and its scanner
# on every call (load_payload 3.3 -> 1.7 us for a 50-byte payload here).
_DECODERS = {
    (reorder, parse_float): json.JSONDecoder(
        object_pairs_hook=_js_object if reorder else None, parse_float=parse_float
    )
    for reorder in (False, True)
    for parse_float in (_js_float_for_orjson, _js_float)
}


def _parse(raw: bytes, parse_float: Any) -> Any:
    # No key to reorder: skip the per-object Python hook (the common case).
    reorder = _INDEX_KEY.search(raw) is not None
    return _DECODERS[reorder, parse_float].decode(raw.decode("utf-8", "surrogatepass"))  # as json.loads does


def load_payload(text: str | bytes) -> Any:
    """Parse stored JSON (jsonb) the way the body encoder needs it; never
    raises: what cannot be read comes back as an :class:`UnreadablePayload`,
    so that one row never fails the statement that fetched a whole batch."""
    raw = text.encode() if isinstance(text, str) else text
    try:
        try:
            value = _parse(raw, _js_float_for_orjson)
        except _TinyFloat:  # rare: parse again, for the standard encoder
            return _parse(raw, _js_float)
    except (ValueError, RecursionError) as exc:
        return _unreadable(exc)
    return JsonObject(value) if type(value) is dict else value


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as the vendor API documents it."""
    # isoformat is several times cheaper than strftime; both give 4-digit
    # years. An aware UTC time ends in "+00:00": cut, not replace(tzinfo=None).
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def encode_body(event_type: str, data: Mapping[str, Any], created_at: datetime) -> bytes:
    """The exact bytes POSTed for an event, to every webhook and on every retry."""
    envelope = {"event": event_type, "data": data, "timestamp": format_timestamp(created_at)}
    if type(data) is JsonObject:
        # orjson refuses an integer beyond 64 bits (and a lone surrogate,
        # which jsonb cannot hold): those take the standard encoder.
        with contextlib.suppress(orjson.JSONEncodeError):
            # Copied: orjson's bytes keep its write buffer's capacity, ~4 KB
            # whatever the body's length (50,000 bodies of ~150 bytes held
            # 207 MB, their copies 15 MB), and a worker holds thousands.
            return memoryview(orjson.dumps(envelope)).tobytes()
    return _ENCODER.encode(envelope).encode()


def event_body(event_type: str, data: Any, created_at: datetime, log: Any) -> bytes | UnreadablePayload:
    """:func:`encode_body`, or plain JSON when that fails: one odd event must
    never block the outbox. Its bytes are still exact and signed; only the
    JavaScript re-serialisation nicety is lost. Deterministic either way, so
    any worker that encodes an event gets the same bytes. A payload that
    could not be read at all is passed on: its deliveries fail alone."""
    if isinstance(data, UnreadablePayload):
        return data
    try:
        return encode_body(event_type, data, created_at)
    except Exception:
        log.exception("body encoding fell back to plain JSON", event_type=event_type)
        plain = json.loads(json.dumps(data, default=str))
        return json.dumps(
            {"event": event_type, "data": plain, "timestamp": format_timestamp(created_at)},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()


# Keyed once per secret: a copy of a keyed HMAC skips hashing the key's
# pads again (1.7 -> 0.9 us per signature here; each request signs twice).
# The cache holds what Job.secrets already holds in memory.
@functools.lru_cache(maxsize=1024)
def _body_mac(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


@functools.lru_cache(maxsize=1024)
def _standard_mac(secret: str) -> hmac.HMAC:
    return hmac.new(base64.b64decode(secret.removeprefix("whsec_")), digestmod=hashlib.sha256)


def body_signature(body: bytes, secret: str) -> str:
    mac = _body_mac(secret).copy()
    mac.update(body)
    return mac.hexdigest()


def standard_signature(msg_id: str, timestamp: int, body: bytes, secret: str) -> str:
    mac = _standard_mac(secret).copy()
    mac.update(b"%s.%d.%s" % (msg_id.encode(), timestamp, body))
    return "v1," + base64.b64encode(mac.digest()).decode()


def message_id(event_id: int) -> str:
    """The ``webhook-id``: one per event, the same on every retry and redelivery."""
    return f"evt_{event_id}"


def sign_headers(
    *,
    event_id: int,
    body: bytes,
    secrets: Iterable[str],
    timestamp: int,
    signature_header: str,
) -> dict[str, str]:
    """Signature headers for one attempt, ``secrets`` newest first.

    During a rotation's overlap both secrets sign: space-separated in
    ``webhook-signature`` (the Standard Webhooks libraries try each), and the
    old one in ``<signature_header>-Previous``, because the vendor API's check
    compares the whole signature header's value and one value cannot
    match two secrets.
    """
    secrets = list(secrets)
    msg_id = message_id(event_id)
    headers = {
        signature_header: body_signature(body, secrets[0]),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(standard_signature(msg_id, timestamp, body, s) for s in secrets),
    }
    if len(secrets) > 1:
        headers[f"{signature_header}-Previous"] = body_signature(body, secrets[1])
    return headers


def verify_body_signature(body: bytes, signature: str, secret: str) -> bool:
    """Constant-time check of a signature header's value, the hex HMAC-SHA256 of
    the body (for receivers and tests)."""
    return hmac.compare_digest(body_signature(body, secret), signature)
