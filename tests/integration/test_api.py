"""The management HTTP API, over real HTTP (uvicorn on loopback) against the real database."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from outbox_worker import api_keys
from outbox_worker.api import MAX_BODY_BYTES, MAX_PAGE_SIZE, create_app
from outbox_worker.settings import Settings
from tests.helpers import wait_for
from tests.live_server import serve

# The request of the vendor docs' curl example, byte for byte.
DOC_BODY = (
    b'{\n"url": "https://meine-app.de/webhooks/brutlers",\n'
    b'"events": ["order.created", "order.status_changed"]\n}'
)
UNAUTHORIZED = {"code": "unauthorized", "message": "missing or invalid API key"}
WEBHOOK_NOT_FOUND = {"code": "not_found", "message": "webhook not found"}
DELIVERY_NOT_FOUND = {"code": "not_found", "message": "delivery not found"}
BRAND_NOT_FOUND = {"code": "not_found", "message": "brand not found"}
HOOKS = "/api/vendor/webhooks"
ROOT = Path(__file__).resolve().parents[2]


def issue_key(conn: psycopg.Connection[Any], owner: str) -> str:
    return api_keys.create_api_key(conn, owner).key


def auth(key: str) -> dict[str, str]:
    return {"X-Api-Key": key}


def create_hook(
    client: httpx.Client, key: str, url: str = "https://example.com/hook", events: list[str] | None = None
) -> dict[str, Any]:
    r = client.post(HOOKS, json={"url": url, "events": events or ["order.created"]}, headers=auth(key))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def add_delivery(
    conn: psycopg.Connection[Any],
    webhook_id: str,
    owner: str,
    *,
    status: str = "failed",
    attempts: int = 2,
    event_type: str = "order.created",
) -> int:
    """A delivery with ``attempts`` logged attempts, as the worker would leave it."""
    event_id = scalar(conn, "select outbox.emit(%s, %s, '{\"id\": 1}')", owner, event_type)
    delivery_id: int = scalar(
        conn,
        "insert into outbox.deliveries"
        " (event_id, webhook_id, status, attempts, completed_at, last_status_code, last_error)"
        " values (%s, %s, %s, %s, case when %s = 'pending' then null else now() end, 500, 'HTTP 500')"
        " returning id",
        event_id,
        webhook_id,
        status,
        attempts,
        status,
    )
    for n in range(1, attempts + 1):
        conn.execute(
            "insert into outbox.delivery_attempts (delivery_id, attempt, attempted_at, duration_ms,"
            " status_code, error_class, error, response_body, worker_id)"
            " values (%s, %s, now(), 12.5, 500, 'http', 'HTTP 500', 'oops', 'w1')",
            (delivery_id, n),
        )
    return delivery_id


def scalar(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def count(conn: psycopg.Connection[Any], sql: str, *params: Any) -> int:
    return int(scalar(conn, sql, *params))


def stored_secrets(conn: psycopg.Connection[Any], webhook_id: str) -> tuple[str, str | None]:
    """The signing secrets the worker will use: the one place these tests read them as stored."""
    row = conn.execute(
        "select secret, previous_secret from outbox.webhooks where id = %s", (webhook_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


# -- vendor routes ----------------------------------------------------------------


def test_the_docs_curl_example_registers_a_webhook_and_shows_its_secret_once(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    r = client.post(HOOKS, content=DOC_BODY, headers={"X-Api-Key": key, "Content-Type": "application/json"})

    assert r.status_code == 201
    body = r.json()
    assert body["url"] == "https://meine-app.de/webhooks/brutlers"
    assert body["events"] == ["order.created", "order.status_changed"]
    assert body["status"] == "active"
    assert body["secret"].startswith("whsec_")
    assert scalar(conn, "select owner_id from outbox.webhooks where id = %s", body["id"]) == "vendor-1"
    assert stored_secrets(conn, body["id"])[0] == body["secret"]
    for path in (HOOKS, f"{HOOKS}/{body['id']}"):
        again = client.get(path, headers=auth(key))
        assert again.status_code == 200
        assert body["secret"] not in again.text
        assert "secret" not in again.text


def test_webhook_round_trip_get_list_update_delete(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key, events=["order.*"])
    path = f"{HOOKS}/{hook['id']}"

    got = client.get(path, headers=auth(key)).json()
    assert got == {k: v for k, v in hook.items() if k != "secret"}
    listed = client.get(HOOKS, headers=auth(key)).json()
    assert listed == {"data": [got]}
    assert client.get(HOOKS, params={"event": "order.created"}, headers=auth(key)).json()["data"] == [got]
    assert client.get(HOOKS, params={"event": "customer.created"}, headers=auth(key)).json() == {"data": []}

    r = client.patch(
        path, json={"url": "https://example.org/new", "events": ["customer.created"]}, headers=auth(key)
    )
    assert r.status_code == 200
    assert (r.json()["url"], r.json()["events"], r.json()["status"]) == (
        "https://example.org/new",
        ["customer.created"],
        "active",
    )
    disabled = client.patch(path, json={"status": "disabled"}, headers=auth(key)).json()
    assert (disabled["status"], disabled["disabled_reason"], disabled["url"]) == (
        "disabled",
        "disabled by owner",
        "https://example.org/new",
    )
    assert conn.execute("select enabled from outbox.webhooks where id = %s", (hook["id"],)).fetchone() == (
        False,
    )
    enabled = client.patch(path, json={"status": "active", "url": None}, headers=auth(key)).json()
    assert (enabled["status"], enabled["disabled_reason"], enabled["url"]) == (
        "active",
        None,
        "https://example.org/new",
    )

    r = client.delete(path, headers=auth(key))
    assert (r.status_code, r.content) == (204, b"")
    assert client.get(path, headers=auth(key)).status_code == 404
    assert client.delete(path, headers=auth(key)).json() == WEBHOOK_NOT_FOUND
    assert client.get(HOOKS, headers=auth(key)).json() == {"data": []}


def test_delete_removes_the_delivery_logs(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "vendor-1")
    hook, kept = create_hook(client, key), create_hook(client, key)
    add_delivery(conn, hook["id"], "vendor-1", attempts=3)
    add_delivery(conn, kept["id"], "vendor-1", attempts=1)

    assert client.delete(f"{HOOKS}/{hook['id']}", headers=auth(key)).status_code == 204

    assert count(conn, "select count(*) from outbox.deliveries where webhook_id = %s", hook["id"]) == 0
    assert count(conn, "select count(*) from outbox.delivery_attempts") == 1
    assert count(conn, "select count(*) from outbox.deliveries where webhook_id = %s", kept["id"]) == 1


def test_a_sixth_webhook_is_refused_with_409(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key, other = issue_key(conn, "vendor-1"), issue_key(conn, "vendor-2")
    for n in range(5):
        create_hook(client, key, url=f"https://example.com/{n}")

    r = client.post(
        HOOKS, json={"url": "https://example.com/6", "events": ["order.created"]}, headers=auth(key)
    )

    assert r.status_code == 409
    assert r.json()["code"] == "webhook_limit_reached"
    assert "limit" in r.json()["message"]
    assert set(r.json()) == {"code", "message"}
    assert count(conn, "select count(*) from outbox.webhooks where owner_id = 'vendor-1'") == 5
    create_hook(client, other)  # the limit is per owner


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"url": "ftp://example.com/x", "events": ["order.created"]}, 422, "invalid_url"),
        ({"url": "not a url", "events": ["order.created"]}, 422, "invalid_url"),
        ({"url": "https://user:pw@example.com/", "events": ["order.created"]}, 422, "invalid_url"),
        ({"url": "https://example.com/", "events": ["order.shipped"]}, 422, "unknown_event_type"),
        ({"url": "https://example.com/", "events": []}, 422, "no_event_types"),
        ({"url": "https://example.com/\u0000", "events": ["order.created"]}, 422, "invalid_input"),
        ({"url": "https://example.com/\ud800", "events": ["order.created"]}, 422, "invalid_input"),
        ({"events": ["order.created"]}, 422, "validation_error"),
        ({"url": "https://example.com/", "events": "order.created"}, 422, "validation_error"),
        (
            {"url": "https://example.com/", "events": ["order.created"], "secret": "mine"},
            422,
            "validation_error",
        ),
        ([1, 2], 422, "validation_error"),
    ],
)
def test_refused_creates_write_nothing(
    client: httpx.Client, conn: psycopg.Connection[Any], body: Any, status: int, code: str
) -> None:
    key = issue_key(conn, "vendor-1")

    # json.dumps escapes lone surrogates as the JSON text a client would send.
    content = json.dumps(body).encode()
    r = client.post(HOOKS, content=content, headers={**auth(key), "Content-Type": "application/json"})

    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert r.json()["message"]
    assert set(r.json()) <= {"code", "message", "details"}
    assert count(conn, "select count(*) from outbox.webhooks") == 0


def test_schema_errors_come_in_the_envelope_with_details(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")

    r = client.post(HOOKS, json={"events": ["order.created"]}, headers=auth(key))

    assert r.status_code == 422
    assert r.json() == {
        "code": "validation_error",
        "message": "the request does not match the API schema",
        "details": [{"loc": ["body", "url"], "msg": "Field required", "type": "missing"}],
    }


def test_a_body_that_is_not_json_is_a_400(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "vendor-1")

    r = client.post(HOOKS, content=b'{"url": ', headers={**auth(key), "Content-Type": "application/json"})

    assert r.status_code == 400
    assert r.json()["code"] == "bad_request"


def test_oversized_bodies_are_a_413_whether_declared_or_streamed(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    body = b'{"url": "https://example.com/' + b"a" * MAX_BODY_BYTES + b'", "events": ["order.created"]}'
    headers = {**auth(key), "Content-Type": "application/json"}

    def chunks() -> Iterator[bytes]:
        yield from (body[i : i + 4096] for i in range(0, len(body), 4096))

    declared = client.post(HOOKS, content=body, headers=headers)
    streamed = client.post(HOOKS, content=chunks(), headers=headers)

    for r in (declared, streamed):
        assert (r.status_code, r.json()) == (
            413,
            {"code": "payload_too_large", "message": "Content Too Large"},
        )
    assert "content-length" not in streamed.request.headers
    assert count(conn, "select count(*) from outbox.webhooks") == 0


@pytest.mark.parametrize(
    ("method", "suffix", "kwargs"),
    [
        ("PATCH", "", {"json": {"status": "paused"}}),
        ("PATCH", "", {"json": {"url": "gopher://example.com"}}),
        ("PATCH", "", {"json": {"events": ["nope"]}}),
        ("GET", "/deliveries", {"params": {"limit": 0}}),
        ("GET", "/deliveries", {"params": {"limit": MAX_PAGE_SIZE + 1}}),
        ("GET", "/deliveries", {"params": {"cursor": "abc"}}),
        ("POST", "/deliveries/0/redeliver", {}),
    ],
)
def test_refused_updates_and_queries_are_422_and_change_nothing(
    client: httpx.Client, conn: psycopg.Connection[Any], method: str, suffix: str, kwargs: dict[str, Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key)

    r = client.request(method, f"{HOOKS}/{hook['id']}{suffix}", headers=auth(key), **kwargs)

    assert r.status_code == 422, r.text
    assert r.json()["code"] in {"validation_error", "invalid_url", "unknown_event_type", "no_event_types"}
    assert client.get(f"{HOOKS}/{hook['id']}", headers=auth(key)).json() == {
        k: v for k, v in hook.items() if k != "secret"
    }


def test_a_huge_event_filter_is_refused_at_once(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "brand-1")
    filter_40kb = ("a." * 20_000)[:40_000]  # took 7-14 s of database CPU per request
    for path, name in ((HOOKS, "event"), ("/brands/brand-1/webhooks", "topic")):
        r = client.get(path, params={name: filter_40kb}, headers=auth(key))
        assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text
        assert r.elapsed.total_seconds() < 1.0, r.elapsed
        assert filter_40kb[:100] not in r.text  # not echoed back


def test_a_malformed_webhook_id_is_a_validation_error(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    r = client.get(f"{HOOKS}/not-a-uuid", headers=auth(issue_key(conn, "vendor-1")))

    assert r.status_code == 422
    assert r.json()["details"][0]["loc"] == ["path", "webhook_id"]


def test_rotate_secret_shows_the_new_secret_once_and_keeps_the_old_one_signing(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key)

    r = client.post(f"{HOOKS}/{hook['id']}/rotate-secret", headers=auth(key))

    assert r.status_code == 200
    assert r.json()["id"] == hook["id"]
    assert r.json()["secret"].startswith("whsec_")
    assert r.json()["secret"] != hook["secret"]
    assert stored_secrets(conn, hook["id"]) == (r.json()["secret"], hook["secret"])
    overlap = "select previous_secret_expires_at > now() from outbox.webhooks where id = %s"
    assert scalar(conn, overlap, hook["id"]) is True
    assert "secret" not in client.get(f"{HOOKS}/{hook['id']}", headers=auth(key)).text


def test_deliveries_are_paged_newest_first_with_their_attempts(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    hook, other = create_hook(client, key), create_hook(client, key)
    ids = [add_delivery(conn, hook["id"], "vendor-1", attempts=n % 3) for n in range(5)]
    add_delivery(conn, other["id"], "vendor-1")
    pending = add_delivery(conn, hook["id"], "vendor-1", status="pending", attempts=1)
    ids.append(pending)
    path = f"{HOOKS}/{hook['id']}/deliveries"

    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(path, params=params, headers=auth(key))
        assert page.status_code == 200, page.text
        pages += 1
        seen += [d["id"] for d in page.json()["data"]]
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(ids, reverse=True)

    newest = client.get(path, params={"limit": 1}, headers=auth(key)).json()["data"][0]
    assert newest["id"] == pending
    assert newest["status"] == "pending"
    assert newest["next_attempt_at"] is not None
    assert newest["event_type"] == "order.created"
    assert newest["attempt_count"] == 1
    assert newest["attempts"] == [
        {
            "attempt": 1,
            "attempted_at": newest["attempts"][0]["attempted_at"],
            "duration_ms": 12.5,
            "status_code": 500,
            "error_class": "http",
            "error": "HTTP 500",
            "response_body": "oops",
        }
    ]
    datetime.fromisoformat(newest["attempts"][0]["attempted_at"])
    failed = client.get(path, params={"cursor": pending}, headers=auth(key)).json()["data"][0]
    assert (failed["status"], failed["next_attempt_at"], failed["last_status_code"]) == ("failed", None, 500)
    assert len(failed["attempts"]) == failed["attempt_count"] == 4 % 3


def test_the_default_page_and_an_empty_log(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key)
    path = f"{HOOKS}/{hook['id']}/deliveries"
    assert client.get(path, headers=auth(key)).json() == {"data": [], "next": None}
    for _ in range(21):
        add_delivery(conn, hook["id"], "vendor-1", attempts=0)

    page = client.get(path, headers=auth(key)).json()

    assert len(page["data"]) == 20
    assert page["next"] == page["data"][-1]["id"]


def test_redeliver_starts_a_new_round(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "vendor-1")
    hook = create_hook(client, key)
    delivery = add_delivery(conn, hook["id"], "vendor-1", attempts=4)

    r = client.post(f"{HOOKS}/{hook['id']}/deliveries/{delivery}/redeliver", headers=auth(key))

    assert r.status_code == 202
    assert (r.json()["id"], r.json()["status"], r.json()["attempt_count"]) == (delivery, "pending", 0)
    assert len(r.json()["attempts"]) == 4  # the log of earlier rounds stays
    row = conn.execute(
        "select status::text, attempts from outbox.deliveries where id = %s", (delivery,)
    ).fetchone()
    assert row == ("pending", 0)


def test_redeliver_through_another_webhook_is_404(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "vendor-1")
    hook, other = create_hook(client, key), create_hook(client, key)
    delivery = add_delivery(conn, other["id"], "vendor-1")

    for path in (
        f"{HOOKS}/{hook['id']}/deliveries/{delivery}/redeliver",
        f"{HOOKS}/{hook['id']}/deliveries/{delivery + 1000}/redeliver",
    ):
        r = client.post(path, headers=auth(key))
        assert (r.status_code, r.json()) == (404, DELIVERY_NOT_FOUND)
    assert conn.execute(
        "select status::text from outbox.deliveries where id = %s", (delivery,)
    ).fetchone() == ("failed",)


# -- authentication and isolation -------------------------------------------------


def every_route(webhook_id: str, delivery_id: int, brand: str) -> list[tuple[str, str, dict[str, Any]]]:
    body = {"json": {"url": "https://example.com/x", "events": ["order.created"]}}
    return [
        ("POST", HOOKS, body),
        ("GET", HOOKS, {}),
        ("GET", f"{HOOKS}/{webhook_id}", {}),
        ("PATCH", f"{HOOKS}/{webhook_id}", {"json": {"status": "disabled"}}),
        ("DELETE", f"{HOOKS}/{webhook_id}", {}),
        ("POST", f"{HOOKS}/{webhook_id}/rotate-secret", {}),
        ("GET", f"{HOOKS}/{webhook_id}/deliveries", {}),
        ("POST", f"{HOOKS}/{webhook_id}/deliveries/{delivery_id}/redeliver", {}),
        ("POST", f"{HOOKS}/{webhook_id}/test", {}),
        ("POST", f"{HOOKS}/{webhook_id}/replay", {"params": {"since": "2000-01-01T00:00:00Z"}}),
        ("GET", "/api/vendor/deliveries", {"params": {"webhook_id": webhook_id}}),
        ("GET", f"/api/vendor/deliveries/{delivery_id}", {"params": {"include": "body"}}),
        ("POST", f"/api/vendor/deliveries/{delivery_id}/redeliver", {}),
        ("POST", f"/brands/{brand}/webhooks", {"json": {"topic": "Deals", "url": "https://example.com/x"}}),
        ("GET", f"/brands/{brand}/webhooks", {}),
        ("DELETE", f"/brands/{brand}/webhooks/{webhook_id}", {}),
    ]


def snapshot(conn: psycopg.Connection[Any]) -> list[Any]:
    return conn.execute(
        "select w.id, w.url, w.events, w.enabled, w.secret, w.updated_at,"
        " (select array_agg(d.status::text || d.attempts order by d.id) from outbox.deliveries d"
        "   where d.webhook_id = w.id)"
        " from outbox.webhooks w order by w.id"
    ).fetchall()


def test_missing_wrong_and_revoked_keys_get_the_same_401_everywhere(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "brand-1")
    hook = create_hook(client, key)
    delivery = add_delivery(conn, hook["id"], "brand-1")
    revoked = api_keys.create_api_key(conn, "brand-1")
    api_keys.revoke_api_key(conn, revoked.id, "brand-1")
    before = snapshot(conn)
    bad_keys: list[dict[str, str] | dict[bytes, bytes]] = [
        {},
        auth(""),
        auth("brut_" + "0" * 64),
        auth(revoked.key),
        auth(key[:-1]),
        auth(key + "x"),
        auth(key.upper()),
        {b"X-Api-Key": ("é" * 10).encode()},
        auth("brut_" + "a" * 5000),
    ]

    for method, path, kwargs in every_route(hook["id"], delivery, "brand-1"):
        for headers in bad_keys:
            r = client.request(method, path, headers=headers, **kwargs)
            assert (r.status_code, r.json()) == (401, UNAUTHORIZED), (method, path, headers)
    assert snapshot(conn) == before


def test_another_owners_objects_are_404_like_missing_ones(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    owner_key, intruder_key = issue_key(conn, "brand-1"), issue_key(conn, "brand-2")
    hook = create_hook(client, owner_key)
    delivery = add_delivery(conn, hook["id"], "brand-1")
    before = snapshot(conn)
    missing = every_route(str(uuid.uuid4()), delivery + 1000, "brand-3")

    for (method, path, kwargs), (_, missing_path, _) in zip(
        every_route(hook["id"], delivery, "brand-1"), missing, strict=True
    ):
        if path in (HOOKS,):
            continue  # owner-less collections: they answer with the intruder's own data
        theirs = client.request(method, path, headers=auth(intruder_key), **kwargs)
        nothing = client.request(method, missing_path, headers=auth(intruder_key), **kwargs)
        assert theirs.status_code == 404, (method, path)
        assert (theirs.status_code, theirs.content) == (nothing.status_code, nothing.content), (method, path)
    theirs = client.delete(f"/brands/brand-2/webhooks/{hook['id']}", headers=auth(intruder_key))
    nothing = client.delete(f"/brands/brand-2/webhooks/{uuid.uuid4()}", headers=auth(intruder_key))
    assert (theirs.status_code, theirs.content) == (nothing.status_code, nothing.content)
    assert theirs.json() == WEBHOOK_NOT_FOUND
    assert snapshot(conn) == before
    assert client.get(HOOKS, headers=auth(intruder_key)).json() == {"data": []}


def test_every_key_of_an_owner_works_until_revoked(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    first, second = api_keys.create_api_key(conn, "vendor-1"), api_keys.create_api_key(conn, "vendor-1")
    hook = create_hook(client, first.key)

    assert client.get(f"{HOOKS}/{hook['id']}", headers=auth(second.key)).status_code == 200
    api_keys.revoke_api_key(conn, first.id, "vendor-1")
    revoked = time.monotonic()

    # Key lookups are cached for half a second: the revocation takes effect within one.
    wait_for(lambda: client.get(HOOKS, headers=auth(first.key)).json() == UNAUTHORIZED, timeout=1.0)
    assert time.monotonic() - revoked < 1.0
    assert client.get(HOOKS, headers=auth(second.key)).json()["data"][0]["id"] == hook["id"]


# -- brand routes -------------------------------------------------------------------


def test_brand_create_answers_in_the_brand_envelope(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    brand = "8929cf8b-6bcc-484a-a7a6-242eaf70cb7a"
    key = issue_key(conn, brand)
    before = datetime.now(UTC).timestamp()

    # The brand docs' example body (the test database allows localhost).
    r = client.post(
        f"/brands/{brand}/webhooks",
        json={"topic": "Showings", "url": "https://localhost:3000"},
        headers=auth(key),
    )

    assert r.status_code == 200
    assert list(r.json()) == ["code", "data"]
    assert r.json()["code"] == "OK"
    data = r.json()["data"]
    assert list(data) == [
        "id", "created_at", "updated_at", "deleted_at", "brand", "topic", "url", "key", "tags", "type",
    ]  # fmt: skip
    assert isinstance(data["created_at"], float)
    assert before - 5 <= data["created_at"] == data["updated_at"] <= datetime.now(UTC).timestamp() + 5
    assert (data["deleted_at"], data["brand"], data["topic"], data["url"], data["tags"], data["type"]) == (
        None,
        brand,
        "Showings",
        "https://localhost:3000",
        None,
        "brand_webhook",
    )
    row = conn.execute("select owner_id, events from outbox.webhooks where id = %s", (data["id"],)).fetchone()
    assert row == (brand, ["Showings"])
    assert stored_secrets(conn, data["id"])[0] == data["key"]


def test_brand_list_filters_by_topic_and_never_shows_the_key(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key = issue_key(conn, "brand-1")
    created = [
        client.post(
            "/brands/brand-1/webhooks",
            json={"topic": t, "url": f"https://example.com/{t}"},
            headers=auth(key),
        ).json()["data"]
        for t in ("Deals", "Showings", "Deals")
    ]

    everything = client.get("/brands/brand-1/webhooks", headers=auth(key))
    deals = client.get("/brands/brand-1/webhooks", params={"topic": "Deals"}, headers=auth(key)).json()

    assert everything.status_code == 200
    assert everything.json()["code"] == "OK"
    assert everything.json()["info"] == {"count": 3, "total": 3}
    assert [h["id"] for h in everything.json()["data"]] == [h["id"] for h in created]
    assert [
        {**h, "key": c["key"]} for h, c in zip(everything.json()["data"], created, strict=True)
    ] == created
    assert "key" not in everything.text and all(c["key"] not in everything.text for c in created)
    assert [h["id"] for h in deals["data"]] == [created[0]["id"], created[2]["id"]]
    assert deals["info"] == {"count": 2, "total": 2}
    assert client.get("/brands/brand-1/webhooks", params={"topic": "Contacts"}, headers=auth(key)).json() == {
        "code": "OK",
        "data": [],
        "info": {"count": 0, "total": 0},
    }


def test_brand_delete_is_204_then_404(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "brand-1")
    wid = client.post(
        "/brands/brand-1/webhooks",
        json={"topic": "Contacts", "url": "https://example.com/c"},
        headers=auth(key),
    ).json()["data"]["id"]
    add_delivery(conn, wid, "brand-1", event_type="Contacts")

    r = client.delete(f"/brands/brand-1/webhooks/{wid}", headers=auth(key))

    assert (r.status_code, r.content) == (204, b"")
    assert count(conn, "select count(*) from outbox.deliveries") == 0
    assert client.get("/brands/brand-1/webhooks", headers=auth(key)).json()["data"] == []
    again = client.delete(f"/brands/brand-1/webhooks/{wid}", headers=auth(key))
    assert (again.status_code, again.json()) == (404, WEBHOOK_NOT_FOUND)


def test_brand_refusals(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    key = issue_key(conn, "brand-1")
    url = "/brands/brand-1/webhooks"

    unknown = client.post(url, json={"topic": "Invoices", "url": "https://example.com/"}, headers=auth(key))
    bad_url = client.post(url, json={"topic": "Deals", "url": "mailto:x@example.com"}, headers=auth(key))
    missing = client.post(url, json={"url": "https://example.com/"}, headers=auth(key))
    for n in range(5):
        client.post(url, json={"topic": "Deals", "url": f"https://example.com/{n}"}, headers=auth(key))
    sixth = client.post(url, json={"topic": "Deals", "url": "https://example.com/6"}, headers=auth(key))

    assert (unknown.status_code, unknown.json()["code"]) == (422, "unknown_event_type")
    assert (bad_url.status_code, bad_url.json()["code"]) == (422, "invalid_url")
    assert (missing.status_code, missing.json()["code"]) == (422, "validation_error")
    assert (sixth.status_code, sixth.json()["code"]) == (409, "webhook_limit_reached")
    assert count(conn, "select count(*) from outbox.webhooks") == 5


def test_another_brands_id_is_404_whether_or_not_it_exists(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    key, theirs = issue_key(conn, "brand-1"), issue_key(conn, "brand-2")
    client.post(
        "/brands/brand-2/webhooks",
        json={"topic": "Deals", "url": "https://example.com/"},
        headers=auth(theirs),
    )
    before = snapshot(conn)

    requests: list[tuple[str, dict[str, Any]]] = [
        ("GET", {}),
        ("POST", {"json": {"topic": "Deals", "url": "https://example.com/"}}),
    ]
    for brand in ("brand-2", "no-such-brand", "brand-1 ", "BRAND-1"):
        for method, kwargs in requests:
            r = client.request(method, f"/brands/{brand}/webhooks", headers=auth(key), **kwargs)
            assert (r.status_code, r.json()) == (404, BRAND_NOT_FOUND), (brand, method)
    assert snapshot(conn) == before


# -- what the API says to someone setting it up -------------------------------------------------


def test_an_unmigrated_database_is_a_503_that_says_to_migrate(make_database: Any) -> None:
    with serve(create_app(make_database("outbox_api_bare"))) as base, httpx.Client(base_url=base) as c:
        r = c.get(HOOKS, headers={"X-Api-Key": "brut_" + "0" * 64})
    assert r.status_code == 503
    assert r.json()["code"] == "unavailable" and "run `outbox-worker migrate`" in r.json()["message"]


def test_a_post_without_content_type_is_told_to_send_it(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    body = b'{"url": "https://example.com/hook", "events": ["order.created"]}'
    for headers in ({}, {"Content-Type": "text/plain"}):
        r = client.post(HOOKS, content=body, headers={**auth(issue_key(conn, "vendor-1")), **headers})
        assert r.status_code == 422
        assert "Content-Type: application/json" in r.json()["message"]
    assert conn.execute("select count(*) from outbox.webhooks").fetchone() == (0,)


def test_an_empty_events_list_has_its_own_code(client: httpx.Client, conn: psycopg.Connection[Any]) -> None:
    r = client.post(
        HOOKS,
        json={"url": "https://example.com/hook", "events": []},
        headers=auth(issue_key(conn, "vendor-1")),
    )
    assert (r.status_code, r.json()["code"]) == (422, "no_event_types")


def test_the_docs_page_loads_its_assets_from_the_app(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']?([^"'\s>]+)""", page.text)
    assert assets and not [a for a in assets if a.startswith(("http:", "https:", "//"))]
    for asset in assets:
        if asset.endswith((".js", ".css")):
            got = client.get(asset)
            assert got.status_code == 200 and len(got.content) > 10_000, asset


def test_the_brand_api_docs_localhost_example_is_refused_and_documented(
    client: httpx.Client, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("update outbox.config set allow_http = false, allow_private_networks = false")
    r = client.post(
        "/brands/brand-1/webhooks",
        json={"topic": "Deals", "url": "https://localhost:3000"},
        headers=auth(issue_key(conn, "brand-1")),
    )
    assert (r.status_code, r.json()["code"]) == (422, "invalid_url")
    reference = (ROOT / "docs" / "reference.md").read_text()
    deviations = next(line for line in reference.splitlines() if "Deviations:" in line)
    assert "`https://localhost:3000` is refused" in deviations


# -- the document and the app ------------------------------------------------------------


def test_the_openapi_document_describes_every_route_and_error(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()

    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": "A key issued by `outbox-worker api-keys create --owner OWNER`.",
    }
    operations = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(operations) == {
        ("POST", HOOKS),
        ("GET", HOOKS),
        ("GET", HOOKS + "/{webhook_id}"),
        ("PATCH", HOOKS + "/{webhook_id}"),
        ("DELETE", HOOKS + "/{webhook_id}"),
        ("POST", HOOKS + "/{webhook_id}/rotate-secret"),
        ("GET", HOOKS + "/{webhook_id}/deliveries"),
        ("POST", HOOKS + "/{webhook_id}/deliveries/{delivery_id}/redeliver"),
        ("POST", HOOKS + "/{webhook_id}/test"),
        ("POST", HOOKS + "/{webhook_id}/replay"),
        ("GET", "/api/vendor/deliveries"),
        ("GET", "/api/vendor/deliveries/{delivery_id}"),
        ("POST", "/api/vendor/deliveries/{delivery_id}/redeliver"),
        ("POST", "/brands/{brand_id}/webhooks"),
        ("GET", "/brands/{brand_id}/webhooks"),
        ("DELETE", "/brands/{brand_id}/webhooks/{webhook_id}"),
    }
    for op in operations.values():
        assert op["security"] == [{"ApiKey": []}]
        for status in ("401", "422", "503"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    assert "409" in operations[("POST", HOOKS)]["responses"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_unknown_paths_and_methods_answer_in_the_envelope(client: httpx.Client) -> None:
    missing = client.get("/api/vendor/nothing")
    wrong_method = client.put(HOOKS)
    options = client.options(f"{HOOKS}/{uuid.uuid4()}")

    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    # Every method of the path, not only those of the first route that matched it.
    assert wrong_method.headers["allow"] == "GET, POST"
    assert options.status_code == 405
    assert options.headers["allow"] == "GET, PATCH, DELETE"


def test_an_unreachable_database_is_a_503() -> None:
    # A bound socket that never listens: connections to it are refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"postgresql://postgres@127.0.0.1:{closed.getsockname()[1]}/nothing?connect_timeout=1"
        with serve(create_app(url, pool_timeout=0.5)) as base, httpx.Client(base_url=base, timeout=10) as c:
            r = c.get(HOOKS, headers=auth("brut_" + "0" * 64))
    assert (r.status_code, r.json()) == (
        503,
        {"code": "unavailable", "message": "the database is unavailable, retry later"},
    )


def test_the_app_mounts_into_an_existing_app(conn: psycopg.Connection[Any], database_url: str) -> None:
    key = issue_key(conn, "vendor-1")
    chained, lazy = create_app(database_url), create_app(database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with chained.router.lifespan_context(chained):
            yield
        # The lazily opened pool is closed by the parent, as a host app would.
        await lazy.state.outbox_database.close()

    parent = FastAPI(lifespan=lifespan)

    @parent.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    parent.mount("/outbox", chained)
    parent.mount("/lazy", lazy)

    with serve(parent) as base, httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/health").json() == {"status": "ok"}
        json_headers = {**auth(key), "Content-Type": "application/json"}
        created = c.post(f"/outbox{HOOKS}", content=DOC_BODY, headers=json_headers)
        assert created.status_code == 201
        assert c.get(f"/lazy{HOOKS}", headers=auth(key)).json()["data"][0]["id"] == created.json()["id"]
        assert c.get("/outbox/openapi.json").json()["info"]["title"] == "outbox_worker management API"
        assert c.get(f"/outbox{HOOKS}").json() == UNAUTHORIZED


def test_secrets_are_sealed_at_rest_when_a_key_is_configured(
    database_url: str, conn: psycopg.Connection[Any]
) -> None:
    from outbox_worker.secretbox import PREFIX, SecretBox, generate_key

    key = generate_key()
    app = create_app(Settings(database_url=database_url, secret_keys=[key]))
    api_key = issue_key(conn, "sealed-vendor")
    with serve(app) as url, httpx.Client(base_url=url) as sealed_client:
        created = sealed_client.post(
            HOOKS, headers=auth(api_key), json={"url": "https://example.com/h", "events": ["order.created"]}
        )
        assert created.status_code == 201
        body = created.json()
        rotated = sealed_client.post(f"{HOOKS}/{body['id']}/rotate-secret", headers=auth(api_key)).json()
    secret, previous = stored_secrets(conn, body["id"])
    assert secret.startswith(PREFIX) and previous is not None and previous.startswith(PREFIX)
    box = SecretBox([key])
    assert box.open(secret) == rotated["secret"] and box.open(previous) == body["secret"]
