"""A leased delivery row becomes a Job: secrets and the webhook's headers opened once."""

from __future__ import annotations

import json
import uuid
from typing import Any

from outbox_worker.jobs import Job, stored_headers
from outbox_worker.secretbox import SecretBox, generate_key

BOX = SecretBox([generate_key()])


def row(headers: str | None) -> dict[str, Any]:
    return {
        "id": 1, "event_id": 2, "webhook_id": uuid.uuid4(), "attempts": 0, "url": "https://example.com/h",
        "secret": "whsec_c2VjcmV0", "previous_secret": None, "body": b"{}", "headers": headers,
        "owner_id": "o",
    }  # fmt: skip


def test_sealed_and_plaintext_header_values_are_opened() -> None:
    raw = json.dumps({"Authorization": BOX.seal("Bearer t0ken"), "X-Tenant": "t-1"})
    job = Job.from_row(row(raw), BOX)
    assert job.headers == (("Authorization", "Bearer t0ken"), ("X-Tenant", "t-1"))
    assert job.secret_error is None
    assert Job.from_row(row(None), BOX).headers == ()


def test_a_webhooks_headers_are_parsed_once_not_per_job() -> None:
    raw = json.dumps({"X-A": "1"})
    assert stored_headers(raw) is stored_headers(raw)
    assert stored_headers(json.dumps({"X-A": "2"})) == (("X-A", "2"),)  # changed text: parsed again


def test_a_sealed_value_without_the_key_fails_like_a_sealed_secret() -> None:
    job = Job.from_row(row(json.dumps({"Authorization": BOX.seal("Bearer t0ken")})), None)
    assert job.headers == () and job.secrets == ()
    assert job.secret_error == "a webhook secret is sealed but OUTBOX_SECRET_KEYS is not set"
