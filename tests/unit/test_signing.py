"""Body bytes and signatures, checked against the vendor API's Node code and the standardwebhooks library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import subprocess
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook as StandardWebhook

from outbox_worker.signing import (
    body_signature,
    encode_body,
    format_timestamp,
    load_payload,
    sign_headers,
    verify_body_signature,
)

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(32, 64))).decode()
MOMENT = datetime(2026, 4, 15, 10, 0, 1, 234567, tzinfo=UTC)

# Stored JSON (as jsonb text) whose bodies must survive JSON.parse + JSON.stringify unchanged.
ROUND_TRIPS = [
    '{"id": "clx1", "status": "FITTING_READY"}',
    '{"total": 20.0, "tax": 3.80, "qty": 2}',
    '{"10": "ten", "2": "two", "b": 1, "a": 2}',
    '{"nested": {"1": [1, 2.50, {"z": null}], "x": true}}',
    '{"text": "Grüße € 日本 \\u2028 \\" \\\\ \\n \\t \\u001f"}',
    '{"price": 19.99, "small": 0.001, "neg": -0.0}',
    '{"01": "not an index", "4294967295": "too big to be one", "7": "index"}',
    # Where Python's notation differs from JavaScript's (more: test_signing_properties.py).
    '{"tiny": 1e-7, "micro": 0.000001, "small": 0.0000015, "huge": 1e17, "edge": 1e21, "past": 12e20}',
]


def node_roundtrip(bodies: list[bytes]) -> list[str]:
    node = shutil.which("node")
    assert node, "node is needed to check JavaScript's re-serialisation"
    script = (
        "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{"
        "process.stdout.write(JSON.stringify(JSON.parse(s).map(b=>JSON.stringify(JSON.parse(b)))))})"
    )
    out = subprocess.run(
        [node, "-e", script],
        input=json.dumps([b.decode() for b in bodies]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return list(json.loads(out))


def test_bodies_survive_javascript_reserialisation() -> None:
    bodies = [encode_body("order.created", load_payload(text), MOMENT) for text in ROUND_TRIPS]
    assert node_roundtrip(bodies) == [b.decode() for b in bodies]


def test_body_shape() -> None:
    body = encode_body("order.status_changed", load_payload('{"id": "x", "10": 1}'), MOMENT)
    assert (
        body
        == b'{"event":"order.status_changed","data":{"10":1,"id":"x"},"timestamp":"2026-04-15T10:00:01.234Z"}'
    )
    assert format_timestamp(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"


@pytest.mark.parametrize("text", ['{"big": 9007199254740993}', '{"past_64_bits": 18446744073709551617}'])
def test_documented_limits_of_reserialisation(text: str) -> None:
    # Known and documented: JavaScript cannot hold integers beyond 2**53, so
    # receivers of those must verify the raw body. Its signature still holds.
    body = encode_body("order.created", load_payload(text), MOMENT)
    assert node_roundtrip([body]) != [body.decode()]
    assert verify_body_signature(body, body_signature(body, SECRET), SECRET)


def test_headers_verify_with_both_schemes() -> None:
    body = encode_body("order.created", {"id": 1}, MOMENT)
    now = int(datetime.now(UTC).timestamp())
    headers = sign_headers(event_id=7, body=body, secrets=[SECRET], timestamp=now, signature_header="X-Sig")
    assert headers["X-Sig"] == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["webhook-id"] == "evt_7"
    StandardWebhook(SECRET).verify(body, headers)
    assert "X-Sig-Previous" not in headers


def test_rotation_overlap_signs_with_both_secrets() -> None:
    body = b'{"event":"order.created","data":{},"timestamp":"2026-04-15T10:00:01.234Z"}'
    now = int(datetime.now(UTC).timestamp())
    headers = sign_headers(
        event_id=1, body=body, secrets=[SECRET, OLD_SECRET], timestamp=now, signature_header="X-Sig"
    )
    assert len(headers["webhook-signature"].split(" ")) == 2
    StandardWebhook(SECRET).verify(body, headers)  # receivers already on the new secret
    StandardWebhook(OLD_SECRET).verify(body, headers)  # receivers not yet switched
    assert verify_body_signature(body, headers["X-Sig"], SECRET)
    assert verify_body_signature(body, headers["X-Sig-Previous"], OLD_SECRET)


def test_tampering_is_detected() -> None:
    body = encode_body("order.created", {"amount": 10}, MOMENT)
    now = int(datetime.now(UTC).timestamp())
    headers: dict[str, Any] = sign_headers(
        event_id=1, body=body, secrets=[SECRET], timestamp=now, signature_header="X-Sig"
    )
    forged = body.replace(b"10", b"99")
    assert not verify_body_signature(forged, headers["X-Sig"], SECRET)
    with pytest.raises(Exception, match="signature"):
        StandardWebhook(SECRET).verify(forged, headers)


def test_bodies_hold_no_more_memory_than_their_length() -> None:
    # orjson's bytes keep its ~4 KB write buffer whatever their length; a
    # worker holds a body per delivery in flight or queued, thousands.
    payloads = [load_payload(json.dumps({"id": f"ord_{i}", "total": i})) for i in range(1000)]
    tracemalloc.start()
    try:
        bodies = [encode_body("order.created", payload, MOMENT) for payload in payloads]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    length = sum(map(len, bodies)) / len(bodies)
    assert held / len(bodies) < length + 200  # a bytes object's header and a list slot, not 4 KB
