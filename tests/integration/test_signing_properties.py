"""Property: any payload JavaScript can represent exactly verifies with the vendor API's re-serialising check.

Payloads go through Postgres jsonb exactly as in production (jsonb
normalises numbers and key order), then through the dispatcher's encoder;
a long-lived Node process plays the receiver: ``JSON.stringify(JSON.parse(raw))``
must give back the raw bytes. Outside these strategies (integers beyond
2**53, floats below 1e-4 or from 1e16, which Python and JavaScript print
differently), receivers must verify the raw body: see test_signing.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import set_json_loads

from outbox_worker.signing import (
    _ENCODER,
    JsonObject,
    body_signature,
    encode_body,
    format_timestamp,
    load_payload,
)

MOMENT = datetime(2026, 4, 15, 10, 0, 1, 234000, tzinfo=UTC)
SAFE_INT = 2**53 - 1

text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
numbers = (
    st.integers(-SAFE_INT, SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=1e-4, max_value=1e15).map(
        lambda f: round(f, 6)
    )
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=-1e-4)
)
keys = text | st.integers(0, 10**6).map(str)
values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(keys, values, max_size=6)


@pytest.fixture(scope="module")
def node() -> Iterator[subprocess.Popen[str]]:
    executable = shutil.which("node")
    assert executable, "node is needed to check JavaScript's re-serialisation"
    script = (
        "require('readline').createInterface({input: process.stdin}).on('line', l => "
        "process.stdout.write(JSON.stringify(JSON.stringify(JSON.parse(JSON.parse(l)))) + '\\n'))"
    )
    process = subprocess.Popen(
        [executable, "-e", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield process
    process.kill()


@pytest.fixture(scope="module")
def jsonb(migrated_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        set_json_loads(load_payload, conn)
        yield conn


def javascript_reserialises(node: subprocess.Popen[str], raw: bytes) -> str:
    assert node.stdin and node.stdout
    node.stdin.write(json.dumps(raw.decode()) + "\n")
    node.stdin.flush()
    return str(json.loads(node.stdout.readline()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
def test_any_representable_payload_verifies_after_reserialisation(
    node: subprocess.Popen[str], jsonb: psycopg.Connection[Any], payload: dict[str, Any]
) -> None:
    row = jsonb.execute("select %s::jsonb", (json.dumps(payload),)).fetchone()
    assert row is not None
    body = encode_body("order.created", row[0], MOMENT)
    secret = "whsec_test"
    reserialised = javascript_reserialises(node, body)
    assert reserialised == body.decode()
    assert body_signature(reserialised.encode(), secret) == body_signature(body, secret)


# Anything jsonb holds: every float (tiny ones included), integers far past
# 64 bits, any text but NUL and lone surrogates (jsonb refuses both).
any_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=16)
any_number = (
    st.integers()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=-1e-3, max_value=1e-3)
)
any_value = st.recursive(
    st.none() | st.booleans() | any_number | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.dictionaries(any_text | st.integers(0, 10**6).map(str), any_value, max_size=6))
def test_the_fast_encoder_writes_the_standard_encoders_bytes(
    jsonb: psycopg.Connection[Any], payload: dict[str, Any]
) -> None:
    """Bodies are fixed once, but an event whose bytes a dead worker never
    stored is encoded again by another: orjson (when load_payload allows it)
    and the standard encoder must agree on every byte."""
    row = jsonb.execute("select %s::jsonb, %s::jsonb::text", (json.dumps(payload),) * 2).fetchone()
    assert row is not None
    data, text = row
    standard = _ENCODER.encode(
        {"event": "order.created", "data": dict(data), "timestamp": format_timestamp(MOMENT)}
    ).encode()
    assert encode_body("order.created", data, MOMENT) == standard
    assert encode_body("order.created", load_payload(text), MOMENT) == standard


@pytest.mark.parametrize(
    ("text", "fast"),
    [
        ('{"id": "ord_1", "total": 20.0, "price": 19.99, "big": 1e300}', True),
        ('{"tiny": 0.000015}', False),  # Python: 1.5e-05, orjson: 0.000015
        ('{"nested": [{"tiny": -0.00001}]}', False),
        ('{"past_64_bits": 18446744073709551616}', True),  # parsed exactly; encoded by the standard encoder
    ],
)
def test_load_payload_marks_what_orjson_may_encode(text: str, fast: bool) -> None:
    data = load_payload(text)
    assert (type(data) is JsonObject) is fast
    assert (
        encode_body("order.created", data, MOMENT)
        == _ENCODER.encode(
            {"event": "order.created", "data": dict(data), "timestamp": format_timestamp(MOMENT)}
        ).encode()
    )
