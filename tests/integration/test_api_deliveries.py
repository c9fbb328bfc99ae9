"""The vendor API's delivery features over real HTTP: the delivery log, test
events, replays, and webhook headers and rate limits."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from outbox_worker import emit
from tests.helpers import eventually
from tests.integration.test_api import (
    DELIVERY_NOT_FOUND,
    HOOKS,
    WEBHOOK_NOT_FOUND,
    add_delivery,
    auth,
    create_hook,
    issue_key,
)
from tests.receiver import Receiver
from tests.workers import running_worker, settled

DELIVERIES = "/api/vendor/deliveries"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


# -- headers and rate limits ---------------------------------------------------------


def test_headers_and_rate_limits_are_set_listed_by_name_and_replaced(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    body = {
        "url": "https://example.com/hook",
        "events": ["order.created"],
        "rate_limit": 2.5,
        "headers": {"Authorization": "Bearer t0ken", "X-Tenant": "t-1"},
    }
    created = ok(client.post(HOOKS, json=body, headers=auth(key)), 201)
    assert (created["rate_limit"], created["header_names"]) == (2.5, ["Authorization", "X-Tenant"])
    path = f"{HOOKS}/{created['id']}"
    for reader in (path, HOOKS):
        assert "t0ken" not in client.get(reader, headers=auth(key)).text
    same = ok(client.patch(path, json={"events": ["order.*"]}, headers=auth(key)))
    assert (same["rate_limit"], same["header_names"]) == (2.5, ["Authorization", "X-Tenant"])
    replaced = ok(client.patch(path, json={"headers": {"X-Other": "1"}, "rate_limit": 10}, headers=auth(key)))
    assert (replaced["rate_limit"], replaced["header_names"]) == (10, ["X-Other"])
    cleared = ok(client.patch(path, json={"headers": {}, "rate_limit": 0}, headers=auth(key)))
    assert (cleared["rate_limit"], cleared["header_names"]) == (None, [])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"headers": {"webhook-id": "x"}}, 'header "webhook-id" is reserved: the worker sets it'),
        ({"headers": {"X-A": "line\nbreak"}}, 'invalid value of header "X-A"'),
        ({"rate_limit": 0.001}, "invalid rate limit 0.001"),
        ({"url": "https://u:p@example.com/h"}, "credentials (user:password@) in the URL are not allowed"),
    ],
)
def test_refused_headers_and_rate_limits_are_422_with_the_reason(
    client: httpx.Client, conn: psycopg.Connection[Any], extra: dict[str, Any], message: str
) -> None:
    key = issue_key(conn, "vendor-1")
    body = {"url": "https://example.com/hook", "events": ["order.created"], **extra}
    refused = client.post(HOOKS, json=body, headers=auth(key))
    assert refused.status_code == 422 and message in refused.json()["message"]


# -- test events ---------------------------------------------------------------------


async def test_a_test_event_goes_to_that_webhook_alone_with_its_headers(
    client: httpx.Client, conn: psycopg.Connection[Any], database_url: str, receiver: Receiver
) -> None:
    key = issue_key(conn, "vendor-1")
    tested = create_hook(client, key, url=receiver.url("/tested"), events=["*"])
    create_hook(client, key, url=receiver.url("/other"), events=["*"])
    path = f"{HOOKS}/{tested['id']}"
    ok(client.patch(path, json={"headers": {"Authorization": "Bearer t0ken"}}, headers=auth(key)))
    delivery = ok(client.post(f"{path}/test", headers=auth(key)), 202)
    assert (delivery["event_type"], delivery["status"], delivery["webhook_id"]) == (
        "webhook.test",
        "pending",
        tested["id"],
    )
    async with running_worker(database_url):
        await eventually(lambda: settled(database_url, 1), timeout=15)
    [got] = receiver.requests
    assert got.path == "/tested" and got.headers["Authorization"] == "Bearer t0ken"
    shown = ok(client.get(f"{DELIVERIES}/{delivery['id']}", headers=auth(key)))
    assert shown["status"] == "delivered" and shown["attempts"][0]["status_code"] == 200

    ok(client.patch(path, json={"status": "disabled"}, headers=auth(key)))
    refused = client.post(f"{path}/test", headers=auth(key))
    assert refused.status_code == 422 and "is disabled" in refused.json()["message"]


# -- the delivery log ----------------------------------------------------------------


def test_the_log_filters_by_webhook_status_and_time_and_pages_by_keyset(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    first, second = create_hook(client, key), create_hook(client, key)
    failed = [add_delivery(conn, first["id"], "vendor-1") for _ in range(3)]
    delivered = add_delivery(conn, second["id"], "vendor-1", status="delivered", attempts=1)
    pending = add_delivery(conn, second["id"], "vendor-1", status="pending", attempts=0)
    conn.execute("update outbox.deliveries set created_at = '2000-01-01Z' where id = %s", (failed[0],))

    def ids(**params: Any) -> list[int]:
        return [d["id"] for d in ok(client.get(DELIVERIES, params=params, headers=auth(key)))["data"]]

    assert ids() == [pending, delivered, *reversed(failed)]
    assert ids(webhook_id=second["id"]) == [pending, delivered]
    assert ids(status="failed") == list(reversed(failed))
    assert ids(status="pending", webhook_id=first["id"]) == []
    assert ids(until="2001-01-01T00:00:00Z") == [failed[0]]
    assert ids(since="2001-01-01T00:00:00") == [pending, delivered, failed[2], failed[1]]  # no offset: UTC
    pages, cursor = [], None
    while True:
        page = ok(
            client.get(
                DELIVERIES, params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=auth(key)
            )
        )
        pages.append([d["id"] for d in page["data"]])
        if (cursor := page["next"]) is None:
            break
    assert pages == [[pending, delivered], [failed[2], failed[1]], [failed[0]]]
    assert all(
        d["webhook_id"] == first["id"]
        for d in ok(client.get(DELIVERIES, params={"status": "failed"}, headers=auth(key)))["data"]
    )
    bad = client.get(DELIVERIES, params={"since": "yesterday"}, headers=auth(key))
    assert bad.status_code == 422


def test_one_delivery_shows_its_attempts_and_the_first_4_kib_of_each_answer(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key)
    delivery_id = add_delivery(conn, hook["id"], "vendor-1", attempts=2)
    conn.execute("update outbox.delivery_attempts set response_body = repeat('é', 5000) where attempt = 2")
    shown = ok(client.get(f"{DELIVERIES}/{delivery_id}", headers=auth(key)))
    first, second = shown["attempts"]
    assert (first["status_code"], first["duration_ms"], first["error_class"], first["response_body"]) == (
        500,
        12.5,
        "http",
        "oops",
    )
    assert second["response_body"] == "é" * 2048  # 4096 bytes of UTF-8
    assert shown["request_body"] is None  # only on demand


async def test_the_request_body_on_demand_is_the_exact_bytes_sent(
    client: httpx.Client, conn: psycopg.Connection[Any], database_url: str, receiver: Receiver
) -> None:
    """Before the first attempt (not stored yet: encoded as the worker will)
    and after it (stored): both are what the receiver got, byte for byte."""
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key, url=receiver.url("/h"), events=["order.created"])
    emit(conn, "vendor-1", "order.created", {"total": 20.0, "2": "js key order", "name": "Zoë", "big": 1e21})
    conn.execute(
        "insert into outbox.deliveries (event_id, webhook_id) select id, %s from outbox.events", (hook["id"],)
    )
    conn.execute("update outbox.events set dispatched_at = now()")
    [(delivery_id,)] = conn.execute("select id from outbox.deliveries").fetchall()
    path = f"{DELIVERIES}/{delivery_id}"
    before = ok(client.get(path, params={"include": "body"}, headers=auth(key)))["request_body"]
    async with running_worker(database_url):
        await eventually(lambda: settled(database_url, 1), timeout=15)
    after = ok(client.get(path, params={"include": "body"}, headers=auth(key)))["request_body"]
    [got] = receiver.requests
    assert before.encode() == after.encode() == got.body
    assert json.loads(got.body)["data"]["name"] == "Zoë"


def test_redeliver_and_replay_queue_deliveries_again(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key)
    one, two = add_delivery(conn, hook["id"], "vendor-1"), add_delivery(conn, hook["id"], "vendor-1")
    again = ok(client.post(f"{DELIVERIES}/{one}/redeliver", headers=auth(key)), 202)
    assert (again["id"], again["status"], again["attempt_count"]) == (one, "pending", 0)
    assert len(again["attempts"]) == 2  # the log of the earlier round stays
    replay = f"{HOOKS}/{hook['id']}/replay"
    assert client.post(replay, headers=auth(key)).status_code == 422  # since is required
    replayed = ok(client.post(replay, params={"since": "2000-01-01T00:00:00Z"}, headers=auth(key)), 202)
    assert (replayed["webhook_id"], replayed["requeued"]) == (hook["id"], 1)
    states = conn.execute("select id, status::text from outbox.deliveries order by id").fetchall()
    assert states == [(one, "pending"), (two, "pending")]


def test_another_owners_deliveries_are_404_like_missing_ones(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    """Every delivery route, with the intruder's valid key and the owner's
    real ids: the answer is byte for byte the one for ids that do not exist,
    and nothing changes."""
    owner, intruder = issue_key(conn, "vendor-1"), issue_key(conn, "vendor-2")
    hook = create_hook(client, owner)
    delivery_id = add_delivery(conn, hook["id"], "vendor-1")
    own_hook = create_hook(client, intruder)
    add_delivery(conn, own_hook["id"], "vendor-2")
    before = conn.execute("select id, status::text, attempts from outbox.deliveries order by id").fetchall()

    def routes(webhook_id: str, delivery: int) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            ("GET", DELIVERIES, {"params": {"webhook_id": webhook_id}}),
            ("GET", f"{DELIVERIES}/{delivery}", {}),
            ("GET", f"{DELIVERIES}/{delivery}", {"params": {"include": "body"}}),
            ("POST", f"{DELIVERIES}/{delivery}/redeliver", {}),
            ("POST", f"{HOOKS}/{webhook_id}/test", {}),
            ("POST", f"{HOOKS}/{webhook_id}/replay", {"params": {"since": "2000-01-01T00:00:00Z"}}),
        ]

    theirs = routes(hook["id"], delivery_id)
    missing = routes(str(uuid.uuid4()), delivery_id + 1000)
    for (method, path, kwargs), (_, missing_path, missing_kwargs) in zip(theirs, missing, strict=True):
        got = client.request(method, path, headers=auth(intruder), **kwargs)
        nothing = client.request(method, missing_path, headers=auth(intruder), **missing_kwargs)
        assert got.status_code == 404, (method, path)
        assert got.json() in (WEBHOOK_NOT_FOUND, DELIVERY_NOT_FOUND)
        assert (got.status_code, got.content) == (nothing.status_code, nothing.content), (method, path)
    listed = ok(client.get(DELIVERIES, headers=auth(intruder)))["data"]
    assert [d["webhook_id"] for d in listed] == [own_hook["id"]]  # its own log, nothing of vendor-1's
    after = conn.execute("select id, status::text, attempts from outbox.deliveries order by id").fetchall()
    assert after == before


def test_the_log_filters_by_event_type(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key, events=["*"])
    created = add_delivery(conn, hook["id"], "vendor-1", event_type="order.created")
    customer = add_delivery(conn, hook["id"], "vendor-1", event_type="customer.created")
    for event_type, expected in (("customer.created", [customer]), ("order.created", [created]), ("x.y", [])):
        page = ok(client.get(DELIVERIES, params={"event_type": event_type}, headers=auth(key)))
        assert [d["id"] for d in page["data"]] == expected, event_type
    assert len(ok(client.get(DELIVERIES, headers=auth(key)))["data"]) == 2
