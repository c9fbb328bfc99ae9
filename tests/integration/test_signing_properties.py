"""Property: every number is written as JavaScript writes it, so bodies
verify with the vendor API's re-serialising check.

A long-lived Node process plays the receiver: ``JSON.stringify(JSON.parse(raw))``
must give back the raw bytes. Floats are drawn across the whole exponent
range and the boundaries where notations change are written out. Payloads
also go through Postgres jsonb, as in production (jsonb normalises numbers
and key order). The one exception, integers beyond 2**53, is in test_signing.py.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg.types.json import set_json_loads

from outbox_worker.signing import (
    JsonObject,
    body_signature,
    encode_body,
    format_timestamp,
    js_dumps,
    load_payload,
)

MOMENT = datetime(2026, 4, 15, 10, 0, 1, 234000, tzinfo=UTC)
SAFE_INT = 2**53 - 1


def around(x: float) -> list[float]:
    return [math.nextafter(x, 0), x, math.nextafter(x, math.inf)]


# Where JavaScript switches notation (1e-6, 1e21), where orjson does (1e-5,
# 1e16), where Python's repr does (1e-4, 1e16), and the ends of the doubles.
BOUNDARIES = sorted(
    {
        b * sign
        for x in (1e-7, 1e-6, 1e-5, 1e-4, 2.0**53, 1e16, 1e17, 1e20, 1e21, 1e22, 0.1, 1.0)
        for b in around(x)
        for sign in (1, -1)
    }
    | {5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308, 0.0, -0.0}
)


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


def assert_javascript_writes_it_alike(node: subprocess.Popen[str], body: bytes) -> None:
    reserialised = javascript_reserialises(node, body)
    assert reserialised == body.decode()
    assert body_signature(reserialised.encode(), "whsec_test") == body_signature(body, "whsec_test")


def test_every_boundary_is_written_as_javascript_writes_it(node: subprocess.Popen[str]) -> None:
    # Each float as a client would send it: Python's notation, JSON text.
    for value in BOUNDARIES:
        text = json.dumps({"x": value, "in": [value, {"y": value}]})
        body = encode_body("order.created", load_payload(text), MOMENT)
        assert_javascript_writes_it_alike(node, body)


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=2000, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=8))
@example(values=[1e-6, 1.5e-6, 9.999999999999999e-6, 1e16, 123456789012345680000.0, 1e21])
def test_floats_across_the_whole_exponent_range(node: subprocess.Popen[str], values: list[float]) -> None:
    body = encode_body("order.created", load_payload(json.dumps({"values": values})), MOMENT)
    assert_javascript_writes_it_alike(node, body)


# Through jsonb, which writes every number in fixed notation: a float that is
# an integer of 2**53 or more comes back as an integer literal, the
# documented exception, so those are left out here.
jsonb_float = finite.filter(lambda f: not (f.is_integer() and abs(f) > SAFE_INT))
text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
numbers = st.integers(-SAFE_INT, SAFE_INT) | jsonb_float
keys = text | st.integers(0, 10**6).map(str)
values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(keys, values, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
def test_any_representable_payload_verifies_after_reserialisation(
    node: subprocess.Popen[str], jsonb: psycopg.Connection[Any], payload: dict[str, Any]
) -> None:
    row = jsonb.execute("select %s::jsonb", (json.dumps(payload),)).fetchone()
    assert row is not None
    assert_javascript_writes_it_alike(node, encode_body("order.created", row[0], MOMENT))


# Anything jsonb holds: every float, integers far past 64 bits, any text but
# NUL and lone surrogates (jsonb refuses both).
any_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=16)
any_number = (
    st.integers() | st.integers(-(2**80), 2**80) | finite | st.floats(min_value=-1e-3, max_value=1e-3)
)
any_value = st.recursive(
    st.none() | st.booleans() | any_number | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=16,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.dictionaries(any_text | st.integers(0, 10**6).map(str), any_value, max_size=6))
def test_the_fast_encoder_writes_the_slow_writers_bytes(
    jsonb: psycopg.Connection[Any], payload: dict[str, Any]
) -> None:
    """Bodies are fixed once, but an event whose bytes a dead worker never
    stored is encoded again by another, and a payload orjson refuses (an
    integer beyond 64 bits) takes the slow writer: the two agree on every byte."""
    row = jsonb.execute("select %s::jsonb, %s::jsonb::text", (json.dumps(payload),) * 2).fetchone()
    assert row is not None
    data, raw = row
    slow = js_dumps(
        {"event": "order.created", "data": dict(data), "timestamp": format_timestamp(MOMENT)}
    ).encode()
    assert encode_body("order.created", data, MOMENT) == slow
    assert encode_body("order.created", load_payload(raw), MOMENT) == slow


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        ('{"id": "ord_1", "total": 20.0, "price": 19.99, "big": 1e300}',
         '{"id":"ord_1","total":20,"price":19.99,"big":1e+300}'),
        ('{"tiny": 0.000015}', '{"tiny":0.000015}'),
        ('{"nested": [{"micro": -0.000001}]}', '{"nested":[{"micro":-0.000001}]}'),
        ('{"huge": 12345678901234567000.0}', '{"huge":12345678901234567000}'),
        ('{"past_64_bits": 18446744073709551616}', '{"past_64_bits":18446744073709551616}'),
    ],
)  # fmt: skip
def test_load_payload_readies_every_number_for_the_fast_encoder(raw: str, body: str) -> None:
    data = load_payload(raw)
    assert type(data) is JsonObject
    assert encode_body("order.created", data, MOMENT) == (
        f'{{"event":"order.created","data":{body},"timestamp":"{format_timestamp(MOMENT)}"}}'.encode()
    )
