"""The web console as a person uses it, in a real headless Chromium, with a real worker and receiver.

Sign in, create a webhook, send a test event and watch it arrive, open the
attempt, redeliver it, read the log, the health and the catalogue, delete
the webhook; keyboard only; at 390 px. The same tests take the screenshots
of docs/console.md.
"""

from __future__ import annotations

import re

import psycopg
from playwright.async_api import Page, expect
from standardwebhooks import Webhook as StandardWebhook

from outbox_worker import webhooks
from tests.console import DESKTOP, PHONE, chromium, issue_key, new_page, shot, sign_in
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker


async def reload_until(page: Page, selector: str, text: str, timeout: float = 15) -> None:
    """Reload (the console does not poll) until ``selector`` reads ``text``."""

    async def shows() -> bool:
        await page.reload()
        return (await page.locator(selector).inner_text()).strip() == text

    await eventually(shows, timeout=timeout, interval=0.2, what=f"{selector} to read {text!r}")


async def test_sign_in_create_send_test_open_attempt_redeliver_delete(
    database_url: str, console_url: str, receiver: Receiver
) -> None:
    key = issue_key(database_url, "vendor-1")
    async with chromium() as browser, running_worker(database_url):
        watched = await new_page(browser)
        page = watched.page
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])

        await page.goto(console_url + "/console/")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await shot(page, "sign-in")
        await sign_in(page, console_url, key)

        await page.get_by_role("link", name="New webhook").first.click()
        await page.get_by_label("Receiver URL").fill(receiver.url("/hooks"))
        await page.get_by_label("webhook.test").check()
        await page.get_by_label("order.created").check()
        await page.get_by_label("Patterns").fill("customer.*")
        await page.get_by_label("Rate limit").fill("50")
        await page.get_by_label("Own headers").fill("Authorization: Bearer abc123")
        await page.get_by_role("button", name="Create webhook").click()

        # The secret, once, with a working copy button.
        secret = await page.get_by_label("Signing secret").input_value()
        assert secret.startswith("whsec_")
        await page.get_by_role("button", name="Copy").click()
        await expect(page.locator(".copied")).to_have_text("Copied")
        assert await page.evaluate("navigator.clipboard.readText()") == secret
        await shot(page, "secret")
        await page.get_by_role("link", name="Continue to the webhook").click()
        assert secret not in await page.content()  # never shown again
        await expect(page.get_by_text("Authorization")).to_be_visible()  # the header's name only
        assert "abc123" not in await page.content()
        await shot(page, "webhook")

        await page.get_by_role("button", name="Send test event").click()
        await page.wait_for_url(re.compile(r".*/console/deliveries/\d+\?notice=test-sent"))
        await eventually(lambda: receiver.on("/hooks"), what="the test event at the receiver")
        await reload_until(page, "#status", "delivered")
        received = receiver.on("/hooks")[0]
        assert received.headers["Authorization"] == "Bearer abc123"
        # The body shown is the exact body received, and it verifies with the secret shown.
        shown_body = await page.locator("#request-body").inner_text()
        assert shown_body == received.body.decode()
        StandardWebhook(secret).verify(received.body, dict(received.headers))
        attempt = page.locator("#attempt-1")
        await expect(attempt.locator(".status-code")).to_have_text("200")
        await expect(attempt).to_contain_text("Error class")
        await expect(attempt.locator("dd").nth(1)).to_have_text(re.compile(r"^[0-9.]+ ms$"))  # the duration
        await expect(page.locator("table.headers")).to_contain_text(received.headers["webhook-id"])
        await shot(page, "delivery")

        await page.get_by_role("button", name="Redeliver").click()
        await expect(page.get_by_role("status")).to_contain_text("Queued again")
        await eventually(lambda: len(receiver.on("/hooks")) == 2, what="the redelivery")
        again = receiver.on("/hooks")[1]
        assert again.headers["webhook-id"] == received.headers["webhook-id"]
        assert again.body == received.body
        await reload_until(page, "#status", "delivered")
        await expect(page.locator("#attempt-2 .status-code")).to_have_text("200")

        # The log, filtered by event type and by status.
        await page.get_by_role("link", name="Delivery log").first.click()
        await page.get_by_label("Event type").select_option("webhook.test")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("#log tbody tr")).to_have_count(1)
        await shot(page, "log")
        await page.get_by_label("Status").select_option("failed")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.get_by_text("No deliveries match")).to_be_visible()

        await page.get_by_role("link", name="Health").first.click()
        await expect(page.locator("svg.chart").first).to_be_visible()
        await expect(page.locator(".window").first).to_contain_text("100.0% of 2 attempts answered 2xx")
        await shot(page, "health")
        await page.get_by_role("link", name="Event types").click()
        await expect(page.get_by_text("A test event sent to one webhook")).to_be_visible()
        await shot(page, "events")

        # Delete, after a confirmation that counts the log going with it.
        await page.get_by_role("link", name="Webhooks").first.click()
        await shot(page, "webhooks")
        await page.get_by_role("link", name="Delete…").click()
        await expect(page.locator("#log-count")).to_have_text("1 deliveries and 2 attempts")
        await page.get_by_role("button", name=re.compile("Delete the webhook")).click()
        await expect(page.get_by_role("status")).to_contain_text("Webhook deleted")
        await expect(page.get_by_text("No webhooks yet")).to_be_visible()
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select count(*) from outbox.deliveries").fetchone() == (0,)
        assert watched.dialogs == [] and watched.errors == []


async def test_keyboard_alone_reaches_the_main_actions(database_url: str, console_url: str) -> None:
    key = issue_key(database_url, "vendor-1")
    async with chromium() as browser:
        page = (await new_page(browser)).page
        await page.goto(console_url + "/console/login")
        await page.keyboard.type(key)  # the key field has the focus
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r".*/console/webhooks"))

        async def tab_to(name: str, limit: int = 40) -> None:
            for _ in range(limit):
                await page.keyboard.press("Tab")
                focused = await page.evaluate("document.activeElement.textContent.trim()")
                if focused == name:
                    return
            raise AssertionError(f"Tab never reached {name!r}")

        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.textContent.trim()") == "Skip to content"
        await tab_to("New webhook")
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r".*/webhooks/new"))
        await page.keyboard.press("Tab")  # past the skip link, into the form by its labels
        await page.get_by_label("Receiver URL").focus()
        await page.keyboard.type("http://127.0.0.1:9/hooks")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Space")  # the first event type's checkbox
        await tab_to("Create webhook")
        await page.keyboard.press("Enter")
        await expect(page.get_by_label("Signing secret")).to_be_visible()
        await tab_to("Copy")
        await tab_to("Continue to the webhook")
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r".*/console/webhooks/[0-9a-f-]{36}$"))
        for action in ("Save", "Send test event", "Rotate secret", "Delete…", "Replay"):
            await tab_to(action)
        # A visible focus ring on the focused control.
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"
        # From the delivery a test event opens, on to Redeliver.
        await page.get_by_role("button", name="Send test event").focus()
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r".*/console/deliveries/\d+"))
        await tab_to("Redeliver")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("status")).to_contain_text("Queued again")


async def test_pages_fit_a_390_px_screen(database_url: str, console_url: str, receiver: Receiver) -> None:
    key = issue_key(database_url, "vendor-1")
    with psycopg.connect(database_url, autocommit=True) as conn:
        long_url = receiver.url("/a-rather-long-path/" + "x" * 80)
        hook = webhooks.create_webhook(conn, "vendor-1", long_url, ["*"])
        delivery = webhooks.send_test_event(conn, "vendor-1", hook.id)
    async with chromium() as browser:
        page = (await new_page(browser, PHONE)).page
        await sign_in(page, console_url, key)
        for path in (
            "/console/webhooks",
            f"/console/webhooks/{hook.id}",
            "/console/deliveries",
            f"/console/deliveries/{delivery}",
            "/console/health",
            "/console/events",
            f"/console/webhooks/{hook.id}/delete",
        ):
            await page.goto(console_url + path)
            widths = await page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert widths[0] <= widths[1] == PHONE["width"], (path, widths)
        await page.goto(console_url + "/console/deliveries")
        await shot(page, "log-phone")
    assert DESKTOP["width"] == 1280


async def test_edit_rotate_replay_and_a_failing_webhooks_health(
    database_url: str, console_url: str, receiver: Receiver
) -> None:
    key = issue_key(database_url, "vendor-1")
    failing = receiver.script("/flaky", 500, 500, 500, 500)  # every attempt of the first round
    with psycopg.connect(database_url, autocommit=True) as conn:
        hook = webhooks.create_webhook(conn, "vendor-1", receiver.url("/old"), ["order.created"])
    async with chromium() as browser, running_worker(database_url):
        page = (await new_page(browser)).page
        await sign_in(page, console_url, key)
        await page.goto(f"{console_url}/console/webhooks/{hook.id}")

        # Edit: URL, events, rate limit; then a secret rotation shows the new one once.
        await page.get_by_label("Receiver URL").fill(failing)
        await page.get_by_label("webhook.test").check()
        await page.get_by_label("Rate limit").fill("7.5")
        await page.get_by_role("button", name="Save").click()
        await expect(page.get_by_role("status")).to_have_text("Saved.")
        await expect(page.get_by_label("Receiver URL")).to_have_value(failing)
        await expect(page.get_by_label("Rate limit")).to_have_value("7.5")
        with psycopg.connect(database_url) as conn:
            saved = webhooks.get_webhook(conn, "vendor-1", hook.id)
        assert (saved.url, saved.events, float(saved.rate_limit or 0)) == (
            failing, ["order.created", "webhook.test"], 7.5,
        )  # fmt: skip
        await page.get_by_role("button", name="Rotate secret").click()
        rotated = await page.get_by_label("Signing secret").input_value()
        assert rotated.startswith("whsec_") and rotated != hook.secret

        # A test event that fails every attempt: the webhook is failing, with an auto-disable time.
        await page.get_by_role("link", name="Continue to the webhook").click()
        await page.get_by_role("button", name="Send test event").click()
        await reload_until(page, "#status", "failed")
        await expect(page.locator(".status-code").first).to_have_text("500")
        await expect(page.locator("#attempt-1")).to_contain_text("answer 500")
        await expect(page.locator("#attempt-1")).to_contain_text("http")  # the error class
        await page.get_by_role("link", name="Health").first.click()
        health = page.locator("section.health")
        await expect(health).to_contain_text("failing since")
        await expect(health).to_contain_text("auto-disable at")
        await expect(health.locator(".window").first).to_contain_text("0.0% of 4 attempts answered 2xx")

        # Replay the failures since an hour ago: queued again, and delivered this time.
        await page.goto(f"{console_url}/console/webhooks/{hook.id}")
        await page.get_by_label("Replay failures since (UTC)").fill("2000-01-01T00:00:00")
        await page.get_by_role("button", name="Replay").click()
        await expect(page.get_by_role("status")).to_have_text("Failed deliveries queued again: 1.")
        await eventually(lambda: len(receiver.on("/flaky")) == 5, what="the replayed delivery")
        await page.get_by_role("link", name=re.compile(r"^#\d+$")).click()
        await reload_until(page, "#status", "delivered")
        await page.get_by_role("link", name="Webhooks").first.click()
        await expect(page.locator("td[data-label=State]")).to_have_text("active")
