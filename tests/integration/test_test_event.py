"""send_test_event: one signed webhook.test event, to one webhook alone."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook as StandardWebhook

from outbox_worker import webhooks
from outbox_worker.errors import WebhookDisabled, WebhookNotFound
from outbox_worker.signing import verify_body_signature
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker, settled


async def test_a_running_worker_delivers_it_signed_to_that_webhook_alone(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """Both webhooks take every event type; only the tested one gets it."""
    tested = webhooks.create_webhook(conn, "v", receiver.url("/tested"), ["*"])
    webhooks.create_webhook(conn, "v", receiver.url("/other"), ["*", "webhook.test"])
    async with running_worker(database_url):
        delivery_id = webhooks.send_test_event(conn, "v", tested.id)
        await eventually(lambda: settled(database_url, 1), timeout=15, what="the test delivery")
    [got] = receiver.requests
    assert got.path == "/tested"
    body = json.loads(got.body)
    assert body["event"] == "webhook.test" and body["data"]["webhook_id"] == str(tested.id)
    assert verify_body_signature(got.body, got.headers["X-Brutlers-Signature"], tested.secret)
    StandardWebhook(tested.secret).verify(got.body, dict(got.headers))
    row = conn.execute("select id, status::text, webhook_id from outbox.deliveries").fetchone()
    assert row == (delivery_id, "delivered", tested.id)


def test_it_is_never_fanned_out(conn: psycopg.Connection[Any]) -> None:
    hook = webhooks.create_webhook(conn, "v", "https://example.com/a", ["*"])
    webhooks.create_webhook(conn, "v", "https://example.com/b", ["*"])
    delivery_id = webhooks.send_test_event(conn, "v", hook.id)
    assert conn.execute("select count(*) from outbox.events where dispatched_at is null").fetchone() == (0,)
    assert conn.execute("select id, webhook_id from outbox.deliveries").fetchall() == [(delivery_id, hook.id)]
    assert conn.execute("select event_type from outbox.delivery_info").fetchall() == [("webhook.test",)]


def test_another_owners_or_a_disabled_webhook_is_refused(conn: psycopg.Connection[Any]) -> None:
    hook = webhooks.create_webhook(conn, "v", "https://example.com/a", ["order.created"])
    with pytest.raises(WebhookNotFound):
        webhooks.send_test_event(conn, "intruder", hook.id)
    with pytest.raises(WebhookNotFound):
        webhooks.send_test_event(conn, "v", "not-a-uuid")
    webhooks.update_webhook(conn, "v", hook.id, enabled=False)
    with pytest.raises(WebhookDisabled, match="is disabled: a test event would not be sent"):
        webhooks.send_test_event(conn, "v", hook.id)
    assert conn.execute("select count(*) from outbox.events").fetchone() == (0,)


async def test_the_async_form(aconn: psycopg.AsyncConnection[Any]) -> None:
    created = await webhooks.create_webhook_async(aconn, "v", "https://example.com/a", ["order.created"])
    delivery_id = await webhooks.send_test_event_async(aconn, "v", created.id)
    cur = await aconn.execute("select outbox.send_test_event('v', %s)", (created.id,))
    assert await cur.fetchone() == (delivery_id + 1,)
