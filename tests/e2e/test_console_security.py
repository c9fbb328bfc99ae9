"""The web console's defences: escaping, owner isolation, CSRF, sessions that end.

Hostile text (event payloads, a receiver's answer, an owner id) is shown as
text and never runs, in a real Chromium with hooks that would see any
script run; a vendor's session cannot see or change another owner's
webhooks or deliveries by URL, by form field or by replaying a request.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import psycopg
from aiohttp import web
from playwright.async_api import expect

from outbox_worker import api_keys, webhooks
from outbox_worker.emit import emit
from tests.console import chromium, http_session, issue_key, new_page, sign_in
from tests.receiver import Receiver
from tests.workers import running_worker, until_settled

SCRIPT = "<script>alert('xss')</script>"
IMG = '"><img src=x onerror="__xss()">'
HOSTILE_OWNER = '"><img src=x onerror=__xss()><script>__xss()</script>'


async def _hostile_answer(_: web.Request) -> web.Response:
    return web.Response(status=500, text=SCRIPT + IMG, content_type="text/html")


async def test_hostile_payloads_answers_and_owner_ids_show_as_text(
    database_url: str, console_url: str, receiver: Receiver
) -> None:
    key = issue_key(database_url, HOSTILE_OWNER)
    url = receiver.script("/hostile", _hostile_answer, _hostile_answer, _hostile_answer, _hostile_answer)
    with psycopg.connect(database_url, autocommit=True) as conn:
        hook = webhooks.create_webhook(conn, HOSTILE_OWNER, url, ["order.created"])
        emit(conn, HOSTILE_OWNER, "order.created", {"note": SCRIPT, "name": IMG, IMG: SCRIPT})
    async with running_worker(database_url):
        await until_settled(database_url, 1)
    async with chromium() as browser:
        watched = await new_page(browser)
        page = watched.page
        await sign_in(page, console_url, key)
        await expect(page.locator(".who")).to_contain_text(HOSTILE_OWNER)
        for path in (
            "/console/webhooks",
            f"/console/webhooks/{hook.id}",
            "/console/deliveries",
            "/console/health",
        ):
            await page.goto(console_url + path)
            assert await page.locator("main img, main script, header img").count() == 0, path
        await page.goto(console_url + "/console/deliveries")
        await page.get_by_role("link", name="#1").click()
        body = await page.locator("#request-body").inner_text()
        assert json.loads(body)["data"] == {"note": SCRIPT, "name": IMG, IMG: SCRIPT}  # the text, exactly
        answer = page.locator("#attempt-1 pre.body")
        await expect(answer).to_have_text(SCRIPT + IMG)
        await expect(page.locator("#attempt-1 .status-code")).to_have_text("500")
        assert await page.locator("main img, main script").count() == 0
        # Nothing ran: no dialog, no call of the hook, not even a script the
        # Content-Security-Policy had to refuse (that would log an error).
        assert watched.dialogs == []
        assert await watched.xss_calls() == 0
        assert watched.errors == []


def _arrange(database_url: str) -> dict[str, Any]:
    """Vendors a and b, each with a webhook and a delivery."""
    made: dict[str, Any] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for owner in ("vendor-a", "vendor-b"):
            made[f"key_{owner}"] = api_keys.create_api_key(conn, owner).key
            hook = webhooks.create_webhook(conn, owner, f"http://127.0.0.1:9/{owner}", ["order.created"])
            made[f"hook_{owner}"] = hook.id
            made[f"delivery_{owner}"] = webhooks.send_test_event(conn, owner, hook.id)
    return made


def _hooks_of(database_url: str, owner: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [str(h.id) for h in webhooks.list_webhooks(conn, owner)]


def test_a_vendor_sees_and_changes_only_its_own_owner(database_url: str, console_url: str) -> None:
    made = _arrange(database_url)
    theirs, their_delivery = made["hook_vendor-b"], made["delivery_vendor-b"]
    mine = made["hook_vendor-a"]
    with http_session(console_url, made["key_vendor-a"]) as (client, csrf):
        # By URL.
        for path in (
            f"/console/webhooks/{theirs}",
            f"/console/webhooks/{theirs}/delete",
            f"/console/deliveries/{their_delivery}",
            f"/console/deliveries?webhook={theirs}",
            "/console/webhooks?owner=vendor-b",
            "/console/deliveries?owner=vendor-b",
            "/console/health?owner=vendor-b",
            "/console/webhooks/not-a-uuid",
            "/console/deliveries/99999999999999999999",
        ):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert "vendor-b" not in answer.text, path
        listing = client.get("/console/webhooks").text
        assert "vendor-a" in listing and "vendor-b" not in listing
        assert "vendor-b" not in client.get("/console/deliveries").text
        # By form: their ids with my token, or my ids naming their owner.
        for path, fields in (
            (f"/console/webhooks/{theirs}/delete", {}),
            (f"/console/webhooks/{theirs}/rotate", {}),
            (f"/console/webhooks/{theirs}/test", {}),
            (f"/console/webhooks/{theirs}/replay", {"since": "2000-01-01T00:00"}),
            (f"/console/webhooks/{theirs}", {"url": "http://127.0.0.1:9/taken", "events": "order.created"}),
            (f"/console/deliveries/{their_delivery}/redeliver", {}),
            (f"/console/webhooks/{mine}/delete", {"owner": "vendor-b"}),
            ("/console/webhooks", {"owner": "vendor-b", "url": "http://127.0.0.1:9/new", "events": "*"}),
        ):
            answer = client.post(path, data={"csrf": csrf, **fields})
            assert answer.status_code == 404, path
        assert _hooks_of(database_url, "vendor-b") == [str(theirs)]
        assert _hooks_of(database_url, "vendor-a") == [str(mine)]
        with psycopg.connect(database_url) as conn:
            hook = webhooks.get_webhook(conn, "vendor-b", theirs)
            assert hook.url == "http://127.0.0.1:9/vendor-b"
            assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (2,)


def test_replayed_and_cross_session_requests_are_refused(database_url: str, console_url: str) -> None:
    made = _arrange(database_url)
    mine = made["hook_vendor-a"]
    with (
        http_session(console_url, made["key_vendor-a"]) as (mine_client, my_csrf),
        http_session(console_url, made["key_vendor-a"]) as (their_client, their_csrf),  # a second tab
        http_session(console_url, made["key_vendor-b"]) as (_, vendor_b_csrf),
    ):
        delete = f"/console/webhooks/{mine}/delete"
        # Another session's token (another owner's, or the same key's), no token, another site's origin.
        assert mine_client.post(delete, data={"csrf": vendor_b_csrf}).status_code == 403
        assert mine_client.post(delete, data={"csrf": their_csrf}).status_code == 403
        assert mine_client.post(delete, data={}).status_code == 403
        evil = {"Origin": "http://evil.example"}
        assert mine_client.post(delete, data={"csrf": my_csrf}, headers=evil).status_code == 403
        # Without the cookie (another browser replaying the form) it is no session at all.
        with httpx.Client(base_url=console_url) as stranger:
            assert stranger.post(delete, data={"csrf": my_csrf}).status_code == 401
        assert _hooks_of(database_url, "vendor-a") == [str(mine)]

        # After sign-out, the same request, cookie and token included, is refused.
        cookie = mine_client.cookies.get("outbox_console")
        assert mine_client.post("/console/logout", data={"csrf": my_csrf}).status_code == 303
        with httpx.Client(base_url=console_url, cookies={"outbox_console": cookie or ""}) as replay:
            assert replay.post(delete, data={"csrf": my_csrf}).status_code == 401
            assert replay.get("/console/webhooks").headers["location"].endswith("/console/login")
        assert _hooks_of(database_url, "vendor-a") == [str(mine)]

        # Revoking the key ends its other sessions at the next request.
        assert their_client.get("/console/webhooks").status_code == 200
        with psycopg.connect(database_url, autocommit=True) as conn:
            for key in api_keys.list_api_keys(conn, "vendor-a"):
                api_keys.revoke_api_key(conn, key.id, "vendor-a")
        gone = their_client.get("/console/webhooks")
        assert gone.status_code == 303 and gone.headers["location"].endswith("/console/login")
        assert their_client.post(delete, data={"csrf": their_csrf}).status_code == 401
        assert _hooks_of(database_url, "vendor-a") == [str(mine)]


def test_the_session_cookie_is_http_only_strict_and_holds_no_key(database_url: str, console_url: str) -> None:
    key = issue_key(database_url, "vendor-a")
    with httpx.Client(base_url=console_url) as client:
        answer = client.post("/console/login", data={"key": key})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Path=/console" in cookie
        value = client.cookies["outbox_console"]
        assert key not in cookie and key[5:] not in value
        with psycopg.connect(database_url) as conn:
            (stored,) = conn.execute("select token_hash from outbox.console_sessions").fetchone() or ()
        assert bytes(stored) != value.encode() and len(bytes(stored)) == 32
        page = client.get("/console/webhooks")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        wrong = client.post("/console/login", data={"key": key + "0"})
        assert wrong.status_code == 401 and "unknown or revoked" in wrong.text


async def test_an_operator_sees_every_owner_and_the_workers(database_url: str, console_url: str) -> None:
    made = _arrange(database_url)
    key = issue_key(database_url, "ops", operator=True)
    async with chromium() as browser, running_worker(database_url, worker_id="console-e2e-worker"):
        page = (await new_page(browser)).page
        await sign_in(page, console_url, key)
        await expect(page.locator("#workers")).to_contain_text("console-e2e-worker")
        await expect(page.locator("#queue-depth")).to_contain_text("pending")
        await page.get_by_role("link", name="Webhooks").first.click()
        for owner in ("vendor-a", "vendor-b"):
            await expect(page.get_by_role("link", name=owner, exact=True)).to_be_visible()
        await page.get_by_role("link", name="vendor-b", exact=True).click()
        await page.get_by_role("link", name="http://127.0.0.1:9/vendor-b").click()
        await expect(page.get_by_label("Receiver URL")).to_have_value("http://127.0.0.1:9/vendor-b")
        await page.get_by_role("link", name="Delivery log").first.click()
        await expect(page).to_have_url(re.compile(r".*owner=vendor-b.*"))
        await expect(page.locator("#log tbody tr")).to_have_count(1)
        await page.get_by_role("link", name=f"#{made['delivery_vendor-b']}").click()
        await page.get_by_role("button", name="Redeliver").click()
        await expect(page.get_by_role("status")).to_contain_text("Queued again")
