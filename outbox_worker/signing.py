"""The bytes we POST and the signatures on them.

Body: compact JSON ``{"event","data","timestamp"}``, fixed once at dispatch.
Keys and numbers are written the way JavaScript's ``JSON.stringify`` writes
them (integer-like keys first, every finite double in JavaScript's notation:
``20.0`` as ``20``, ``1e-6`` as ``0.000001``, ``1e16`` as
``10000000000000000``, ``1e21`` as ``1e+21``), so a receiver that
re-serialises the parsed body, as the vendor API's Node example does, gets the
same bytes back. The one exception: integers beyond 2**53, which JavaScript
cannot hold; receivers of those must verify the raw body.

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


def js_number(value: float) -> str:
    """A finite double as JavaScript writes it (Number::toString): Python's
    shortest round-trip digits, which are JavaScript's, in JavaScript's
    notation: fixed from 1e-6 up to 1e21, else ``d.ddde+n`` / ``de-n``."""
    if value == 0:
        return "0"
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    figures = whole + fraction
    significant = figures.lstrip("0")
    point = len(whole) - (len(figures) - len(significant)) + int(exponent or 0)  # value = 0.digits x 10^point
    digits = significant.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        text = digits + "0" * (point - count)
    elif 0 < point <= 21:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        power = point - 1
        fraction = f".{digits[1:]}" if count > 1 else ""
        text = f"{digits[0]}{fraction}e{'+' if power >= 0 else '-'}{abs(power)}"
    return "-" + text if value < 0 else text


# orjson writes a double as JavaScript does (the same shortest digits) except
# in two bands where the notations differ: [1e-6, 1e-5), which orjson writes
# in exponent form, and (2**53, 1e21), which JavaScript writes as an integer
# and orjson as "9007199254740994.0" or "1e+16". Floats in those bands are
# parsed as _JsNumber, which orjson hands to _orjson_default.
_ORJSON_FIXED_MIN = 1e-5
_JS_FIXED_MIN = 1e-6
_JS_FIXED_MAX = 1e21
_INFINITIES = (math.inf, -math.inf)


class _JsNumber(float):
    """A float that orjson would write in another notation than JavaScript."""

    __slots__ = ()


def _orjson_default(value: Any) -> Any:
    if type(value) is _JsNumber:
        return orjson.Fragment(js_number(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _js_float(text: str) -> float | int:
    value = float(text)
    magnitude = abs(value)
    if _ORJSON_FIXED_MIN <= magnitude <= _MAX_SAFE_INTEGER:  # nearly every float
        # JSON.stringify(20.0) is "20": an integral float within JS's exact
        # range becomes an int so that it is written the same way.
        return int(value) if value.is_integer() else value
    if magnitude == 0:
        return 0
    if value in _INFINITIES:
        raise _OutOfRange
    if _JS_FIXED_MIN <= magnitude < _JS_FIXED_MAX:
        return _JsNumber(value)
    return value  # below 1e-6 or from 1e21: both write exponent form alike


# A key that JavaScript would move to the front, as it appears in JSON text.
# A match inside a string value only costs the slower parse, never a wrong one.
_INDEX_KEY = re.compile(rb'"(?:0|[1-9][0-9]*)"\s*:')


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


class JsonObject(dict[str, Any]):
    """A payload :func:`load_payload` parsed, its numbers made ready for
    orjson to write as JavaScript does, so :func:`encode_body` may use orjson
    (7-14x faster: 188 -> 14 us for a 15 KB payload) for the same bytes."""


# Built once: json.loads with any keyword builds a decoder and its scanner
# on every call (load_payload 3.3 -> 1.7 us for a 50-byte payload here).
_DECODERS = {
    reorder: json.JSONDecoder(object_pairs_hook=_js_object if reorder else None, parse_float=_js_float)
    for reorder in (False, True)
}


def _parse(raw: bytes) -> Any:
    # No key to reorder: skip the per-object Python hook (the common case).
    reorder = _INDEX_KEY.search(raw) is not None
    return _DECODERS[reorder].decode(raw.decode("utf-8", "surrogatepass"))  # as json.loads does


def load_payload(text: str | bytes) -> Any:
    """Parse stored JSON (jsonb) the way the body encoder needs it; never
    raises: what cannot be read comes back as an :class:`UnreadablePayload`,
    so that one row never fails the statement that fetched a whole batch."""
    raw = text.encode() if isinstance(text, str) else text
    try:
        value = _parse(raw)
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
        # which jsonb cannot hold): those take the slower writer below.
        with contextlib.suppress(orjson.JSONEncodeError):
            # Copied: orjson's bytes keep its write buffer's capacity, ~4 KB
            # whatever the body's length (50,000 bodies of ~150 bytes held
            # 207 MB, their copies 15 MB), and a worker holds thousands.
            return memoryview(orjson.dumps(envelope, default=_orjson_default)).tobytes()
    return js_dumps(envelope).encode()


def js_dumps(value: Any) -> str:
    """Compact JSON as ``JSON.stringify`` writes it, numbers included, for
    what orjson cannot write (integers beyond 64 bits) and for payloads that
    :func:`load_payload` did not parse (keys then keep their order)."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(json.dumps(value, ensure_ascii=False))
    elif value is None or isinstance(value, bool):
        parts.append("null" if value is None else "true" if value else "false")
    elif isinstance(value, int):
        parts.append(str(value))
    elif isinstance(value, float):
        if value in _INFINITIES or value != value:
            raise ValueError(f"{value} is not valid JSON")
        parts.append(js_number(value))
    elif isinstance(value, Mapping):
        parts.append("{")
        for i, (key, item) in enumerate(value.items()):
            parts.append(f"{',' if i else ''}{json.dumps(str(key), ensure_ascii=False)}:")
            _write(item, parts)
        parts.append("}")
    elif isinstance(value, (list, tuple)):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")


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


def message_id(event_id: int, prefix: str = "") -> str:
    """The ``webhook-id``: one per event, the same on every retry and
    redelivery; ``prefix`` is the database's (``outbox.config.message_id_prefix``),
    which keeps ids apart across the databases of one fleet."""
    return f"evt_{prefix}_{event_id}" if prefix else f"evt_{event_id}"


def sign_headers(
    *,
    event_id: int,
    body: bytes,
    secrets: Iterable[str],
    timestamp: int,
    signature_header: str,
    message_prefix: str = "",
) -> dict[str, str]:
    """Signature headers for one attempt, ``secrets`` newest first.

    During a rotation's overlap both secrets sign: space-separated in
    ``webhook-signature`` (the Standard Webhooks libraries try each), and the
    old one in ``<signature_header>-Previous``, because the vendor API's check
    compares the whole signature header's value and one value cannot
    match two secrets.
    """
    secrets = list(secrets)
    msg_id = message_id(event_id, message_prefix)
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
