"""Replay, as the README's receiving section states it: the vendor API's
signature covers the body only, so a captured request verifies forever; the
Standard Webhooks signature covers a timestamp taken at each attempt, so a
receiver that rejects old timestamps refuses a replay."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks import WebhookVerificationError

from outbox_worker import emit, webhooks
from outbox_worker.signing import sign_headers, verify_body_signature
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_warns_of_replay_where_receivers_read_it() -> None:
    readme = (ROOT / "README.md").read_text()
    receiving = readme[readme.index("## Receiving webhooks") : readme.index("## Local development")]
    said = " ".join(receiving.split())
    assert "covers the body only, so a captured request verifies forever" in said
    assert re.search(r"replay protection verify the Standard Webhooks `webhook-signature`", said)
    assert "reject old timestamps" in said


async def test_a_captured_request_verifies_forever_but_not_as_a_standard_webhook(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    hook = webhooks.create_webhook(conn, "v", receiver.script("/h", 500, 200), ["order.created"])
    emit(conn, "v", "order.created", {"id": 1})
    # A retry over a second later: webhook-timestamp has whole seconds.
    async with running_worker(database_url, retry_schedule=[1.2, 1.2, 1.2]):
        await eventually(lambda: len(receiver.on("/h")) == 2, what="an attempt and its retry")
    first, retry = receiver.on("/h")
    # The vendor API's signature: the same on every attempt, over the body alone.
    assert first.headers["X-Brutlers-Signature"] == retry.headers["X-Brutlers-Signature"]
    assert verify_body_signature(first.body, first.headers["X-Brutlers-Signature"], hook.secret)
    # Standard Webhooks: signed again at each attempt, over id, timestamp and body.
    assert first.headers["webhook-timestamp"] != retry.headers["webhook-timestamp"]
    assert first.headers["webhook-signature"] != retry.headers["webhook-signature"]
    standard = StandardWebhook(hook.secret)
    standard.verify(first.body, dict(first.headers))
    # A replayer cannot freshen a captured request's timestamp...
    freshened = {**first.headers, "webhook-timestamp": str(int(time.time()) + 1)}
    with pytest.raises(WebhookVerificationError):
        standard.verify(first.body, freshened)
    # ...and one captured over 5 minutes ago is refused as it stands.
    stale = sign_headers(
        event_id=1, body=first.body, secrets=[hook.secret], timestamp=int(time.time()) - 600,
        signature_header="X-Brutlers-Signature",
    )  # fmt: skip
    assert verify_body_signature(first.body, stale["X-Brutlers-Signature"], hook.secret)
    with pytest.raises(WebhookVerificationError):
        standard.verify(first.body, stale)
