"""Webhook CRUD through the SQL functions and their Python wrappers."""

from __future__ import annotations

import base64
import inspect
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from outbox_worker import errors, webhooks

URL = "https://example.com/hook"


def test_create_returns_id_and_secret_once(conn: psycopg.Connection[Any]) -> None:
    created = webhooks.create_webhook(conn, "vendor-1", URL, ["order.created"])
    assert isinstance(created.id, uuid.UUID)
    assert created.secret.startswith("whsec_")
    assert len(base64.b64decode(created.secret.removeprefix("whsec_"))) == 32
    assert created.secret not in repr(created)
    listed = webhooks.list_webhooks(conn, "vendor-1")
    assert [w.id for w in listed] == [created.id]
    assert listed[0].events == ["order.created"] and listed[0].enabled


def test_secrets_are_distinct(conn: psycopg.Connection[Any]) -> None:
    secrets = {webhooks.create_webhook(conn, f"o{i}", URL, ["*"]).secret for i in range(20)}
    assert len(secrets) == 20


@pytest.mark.parametrize("function", ["list_webhooks", "get_webhook"])
def test_readers_never_return_the_secret(conn: psycopg.Connection[Any], function: str) -> None:
    created = webhooks.create_webhook(conn, "vendor-1", URL, ["order.created"])
    args = "'vendor-1'" + (f", '{created.id}'" if function == "get_webhook" else "")
    with conn.cursor() as cur:
        cur.execute(f"select * from outbox.{function}({args})")
        columns = [d.name for d in cur.description or []]
        values = cur.fetchall()
    assert not any("secret" in c for c in columns)
    assert created.secret not in str(values)


def test_sixth_webhook_is_refused_with_a_clear_error(conn: psycopg.Connection[Any]) -> None:
    for i in range(5):
        webhooks.create_webhook(conn, "vendor-1", f"{URL}/{i}", ["order.created"])
    with pytest.raises(
        errors.WebhookLimitReached, match=r'owner "vendor-1" already has 5 webhooks \(maximum 5\)'
    ):
        webhooks.create_webhook(conn, "vendor-1", URL, ["order.created"])
    webhooks.create_webhook(conn, "vendor-2", URL, ["order.created"])  # other owners unaffected
    assert len(webhooks.list_webhooks(conn, "vendor-1")) == 5


def test_limit_is_configurable(conn: psycopg.Connection[Any]) -> None:
    conn.execute("update outbox.config set max_webhooks_per_owner = 2")
    webhooks.create_webhook(conn, "v", URL, ["*"])
    webhooks.create_webhook(conn, "v", URL, ["*"])
    with pytest.raises(errors.WebhookLimitReached):
        webhooks.create_webhook(conn, "v", URL, ["*"])


def test_limit_holds_under_20_concurrent_creates(database_url: str, conn: psycopg.Connection[Any]) -> None:
    barrier = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        with psycopg.connect(database_url) as c:
            barrier.wait()
            try:
                webhooks.create_webhook(c, "racer", f"{URL}/{i}", ["order.created"])
                c.commit()
                result = "created"
            except errors.WebhookLimitReached:
                result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["created"] * 5 + ["refused"] * 15
    assert conn.execute("select count(*) from outbox.webhooks where owner_id = 'racer'").fetchone() == (5,)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (["order.shipped"], 'unknown event type "order.shipped"'),
        (["order.created", "nope"], 'unknown event type "nope"'),
        (["zzz.*"], 'unknown event type pattern "zzz.*"'),
    ],
)
def test_unknown_events_are_refused(conn: psycopg.Connection[Any], events: list[str], message: str) -> None:
    with pytest.raises(errors.UnknownEventType, match=message):
        webhooks.create_webhook(conn, "vendor-1", URL, events)
    assert webhooks.list_webhooks(conn, "vendor-1") == []


def test_an_empty_event_list_has_its_own_error_code(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.NoEventTypes, match="at least one event type") as refused:
        webhooks.create_webhook(conn, "vendor-1", URL, [])
    assert refused.value.sqlstate == "OW013" and not isinstance(refused.value, errors.UnknownEventType)


def test_wildcards_and_filtering_by_event(conn: psycopg.Connection[Any]) -> None:
    all_ = webhooks.create_webhook(conn, "v", URL, ["*"])
    orders = webhooks.create_webhook(conn, "v", URL, ["order.*"])
    exact = webhooks.create_webhook(conn, "v", URL, ["customer.created", "customer.created"])
    assert webhooks.get_webhook(conn, "v", exact.id).events == ["customer.created"]  # deduplicated
    assert {w.id for w in webhooks.list_webhooks(conn, "v", "order.created")} == {all_.id, orders.id}
    assert {w.id for w in webhooks.list_webhooks(conn, "v", "customer.created")} == {all_.id, exact.id}
    assert {w.id for w in webhooks.list_webhooks(conn, "v", "inquiry.received")} == {all_.id}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("example.com/hook", "expected scheme://host"),
        ("ftp://example.com/x", 'scheme "ftp" is not http or https'),
        ("javascript:alert(1)", "expected scheme://host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/a b", "whitespace"),
        ("https://exa_mple.com:99999/", "port out of range"),
        ("https://-bad-.com/", "invalid host name"),
        ("https:///path", "invalid host or port"),
        ("https://example.com/#frag", "fragments"),
        ("https://" + "a" * 2050 + ".com/", "longer than 2048"),
        ("https://[zz::1]/", "invalid host or port"),
    ],
)
def test_invalid_urls_are_refused(conn: psycopg.Connection[Any], url: str, message: str) -> None:
    with pytest.raises(errors.InvalidURL, match=message):
        webhooks.create_webhook(conn, "vendor-1", url, ["order.created"])


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://10.1.2.3/",
        "https://169.254.169.254/latest/meta-data",
        "https://100.100.100.200/",
        "https://192.168.0.1:8443/",
        "https://0.0.0.0/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[fd00:ec2::254]/",
        "https://[fe80::1]/",
        "https://localhost/",
        "https://api.localhost/",
        "https://metadata.google.internal/",
    ],
)
def test_private_targets_are_refused_by_default(conn: psycopg.Connection[Any], url: str) -> None:
    conn.execute("update outbox.config set allow_private_networks = false")
    with pytest.raises(errors.InvalidURL, match="loopback or private|never allowed"):
        webhooks.create_webhook(conn, "vendor-1", url, ["order.created"])


@pytest.mark.parametrize(
    "url", ["https://2130706433/", "https://127.1/", "https://0x7f.0.0.1/", "https://017.0.0.1/"]
)
def test_ambiguous_ipv4_spellings_are_refused(conn: psycopg.Connection[Any], url: str) -> None:
    with pytest.raises(errors.InvalidURL, match="four decimal numbers"):
        webhooks.create_webhook(conn, "vendor-1", url, ["order.created"])


def test_http_needs_allow_http(conn: psycopg.Connection[Any]) -> None:
    conn.execute("update outbox.config set allow_http = false")
    with pytest.raises(errors.InvalidURL, match="https is required"):
        webhooks.create_webhook(conn, "vendor-1", "http://example.com/", ["order.created"])
    conn.execute("update outbox.config set allow_http = true")
    webhooks.create_webhook(conn, "vendor-1", "http://example.com/", ["order.created"])


@pytest.mark.parametrize("owner", ["", " padded ", "line\nbreak", "x" * 256, "nul\x01"])
def test_invalid_owner_ids_are_refused(conn: psycopg.Connection[Any], owner: str) -> None:
    with pytest.raises(errors.InvalidOwnerId):
        webhooks.create_webhook(conn, owner, URL, ["order.created"])


def test_sql_metacharacters_in_owner_ids_are_just_data(conn: psycopg.Connection[Any]) -> None:
    owner = "x'); drop table outbox.webhooks; --\"%s$1"
    created = webhooks.create_webhook(conn, owner, URL, ["order.created"])
    assert [w.id for w in webhooks.list_webhooks(conn, owner)] == [created.id]
    assert webhooks.get_webhook(conn, owner, created.id).owner_id == owner


def test_update_changes_only_what_is_given(conn: psycopg.Connection[Any]) -> None:
    created = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    updated = webhooks.update_webhook(conn, "v", created.id, url="https://example.org/new")
    assert (updated.url, updated.events, updated.enabled) == (
        "https://example.org/new",
        ["order.created"],
        True,
    )
    updated = webhooks.update_webhook(conn, "v", created.id, events=["order.*"], enabled=False)
    assert (updated.url, updated.events, updated.enabled) == ("https://example.org/new", ["order.*"], False)
    assert updated.disabled_reason == "disabled by owner"
    assert updated.updated_at > updated.created_at
    updated = webhooks.update_webhook(conn, "v", created.id, enabled=True)
    assert updated.enabled and updated.disabled_reason is None


def test_update_validates_like_create(conn: psycopg.Connection[Any]) -> None:
    created = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    with pytest.raises(errors.InvalidURL):
        webhooks.update_webhook(conn, "v", created.id, url="gopher://x")
    with pytest.raises(errors.UnknownEventType):
        webhooks.update_webhook(conn, "v", created.id, events=["nope"])
    assert webhooks.get_webhook(conn, "v", created.id).url == URL


@pytest.mark.parametrize("operation", ["get", "update", "delete", "rotate", "replay"])
def test_another_owners_webhook_is_not_found(conn: psycopg.Connection[Any], operation: str) -> None:
    theirs = webhooks.create_webhook(conn, "victim", URL, ["order.created"])
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: webhooks.get_webhook(conn, "attacker", theirs.id),
        "update": lambda: webhooks.update_webhook(conn, "attacker", theirs.id, url="https://evil.example/"),
        "delete": lambda: webhooks.delete_webhook(conn, "attacker", theirs.id),
        "rotate": lambda: webhooks.rotate_webhook_secret(conn, "attacker", theirs.id),
        "replay": lambda: webhooks.replay_failed(conn, "attacker", theirs.id, datetime.now(UTC)),
    }
    with pytest.raises(errors.WebhookNotFound, match=f"webhook {theirs.id} not found") as caught:
        calls[operation]()
    assert "victim" not in str(caught.value)
    # Same answer as for an id that does not exist at all.
    with pytest.raises(errors.WebhookNotFound):
        webhooks.get_webhook(conn, "attacker", uuid.uuid4())
    assert webhooks.get_webhook(conn, "victim", theirs.id).url == URL


def test_malformed_webhook_id_is_not_found(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.WebhookNotFound):
        webhooks.delete_webhook(conn, "v", "not-a-uuid")


def _delivery_with_attempt(
    conn: psycopg.Connection[Any], webhook_id: uuid.UUID, status: str = "failed"
) -> int:
    event_id = conn.execute("select outbox.emit('v', 'order.created', '{\"id\": 1}')").fetchone()[0]  # type: ignore[index]
    row = conn.execute(
        "insert into outbox.deliveries (event_id, webhook_id, status, attempts, completed_at) "
        "values (%s, %s, %s, 4, now()) returning id",
        (event_id, webhook_id, status),
    ).fetchone()
    assert row is not None
    conn.execute(
        "insert into outbox.delivery_attempts "
        "(delivery_id, attempt, attempted_at, duration_ms, status_code, error_class) "
        "values (%s, 1, now(), 12.5, 500, 'http')",
        (row[0],),
    )
    return int(row[0])


def test_delete_removes_deliveries_and_attempts(conn: psycopg.Connection[Any]) -> None:
    doomed = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    kept = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    _delivery_with_attempt(conn, doomed.id)
    kept_delivery = _delivery_with_attempt(conn, kept.id)
    webhooks.delete_webhook(conn, "v", doomed.id)
    assert conn.execute("select id from outbox.deliveries").fetchall() == [(kept_delivery,)]
    assert conn.execute("select delivery_id from outbox.delivery_attempts").fetchall() == [(kept_delivery,)]
    assert conn.execute("select count(*) from outbox.events").fetchone() == (2,)  # the event log stays
    with pytest.raises(errors.WebhookNotFound):
        webhooks.delete_webhook(conn, "v", doomed.id)


def test_rotate_returns_a_new_secret_and_keeps_the_old_for_the_overlap(conn: psycopg.Connection[Any]) -> None:
    created = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    rotated = webhooks.rotate_webhook_secret(conn, "v", created.id)
    assert rotated.id == created.id and rotated.secret != created.secret
    row = conn.execute(
        "select secret, previous_secret, previous_secret_expires_at - now() from outbox.webhooks"
    ).fetchone()
    assert row is not None
    assert row[0] == rotated.secret and row[1] == created.secret
    assert timedelta(hours=23) < row[2] <= timedelta(hours=24)


def test_redeliver_and_replay_failed(conn: psycopg.Connection[Any]) -> None:
    hook = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    first = _delivery_with_attempt(conn, hook.id)
    second = _delivery_with_attempt(conn, hook.id)
    delivered = _delivery_with_attempt(conn, hook.id, status="delivered")
    assert webhooks.redeliver(conn, first, owner_id="v") == first
    status = dict(conn.execute("select id, (status, attempts)::text from outbox.deliveries").fetchall())
    assert status[first] == "(pending,0)" and status[second] == "(failed,4)"
    with pytest.raises(errors.DeliveryNotFound):
        webhooks.redeliver(conn, first, owner_id="someone-else")
    with pytest.raises(errors.DeliveryNotFound):
        webhooks.redeliver(conn, 987654321, "v")
    assert webhooks.replay_failed(conn, "v", hook.id, datetime.now(UTC) - timedelta(hours=1)) == 1
    assert webhooks.replay_failed(conn, "v", hook.id, datetime.now(UTC) + timedelta(hours=1)) == 0
    status = dict(conn.execute("select id, status::text from outbox.deliveries").fetchall())
    assert status == {first: "pending", second: "pending", delivered: "delivered"}
    # Every attempt stays in the log, joined to its webhook and event type.
    log = conn.execute("select delivery_id, url, event_type, status_code from outbox.delivery_log").fetchall()
    assert sorted(log) == sorted((d, URL, "order.created", 500) for d in (first, second, delivered))


def test_redeliver_needs_the_owner_and_operators_say_any_owner(conn: psycopg.Connection[Any]) -> None:
    hook = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    theirs = _delivery_with_attempt(conn, hook.id)
    # The owner once defaulted to NULL, "any owner": one owner's caller re-queued another's delivery.
    with pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("select outbox.redeliver(%s)", (theirs,))
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("select outbox.redeliver(%s, null)", (theirs,))
    assert refused.value.sqlstate == "OW001"
    for wrapper in (webhooks.redeliver, webhooks.redeliver_async):
        assert inspect.signature(wrapper).parameters["owner_id"].default is inspect.Parameter.empty
    assert conn.execute("select status::text from outbox.deliveries").fetchone() == ("failed",)
    assert webhooks.redeliver_any_owner(conn, theirs) == theirs
    assert conn.execute("select status::text from outbox.deliveries").fetchone() == ("pending",)


def test_an_event_filter_is_checked_before_any_sql(database_url: str) -> None:
    # Its cost in outbox.event_patterns grew with the square of the dots: a
    # 40 KB filter took 7-14 s of database CPU. A closed connection proves
    # that nothing reaches the database.
    closed = psycopg.connect(database_url)
    closed.close()
    for refused in ("a." * 20_000, "a" * 101, "order created", "été", "order.\n"):
        with pytest.raises(errors.InvalidEventTypeName, match="at most 100 letters"):
            webhooks.list_webhooks(closed, "v", refused)
    with pytest.raises(psycopg.OperationalError):
        webhooks.list_webhooks(closed, "v", "order.*")


def test_disabling_fails_queued_deliveries(conn: psycopg.Connection[Any]) -> None:
    hook = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    queued = _delivery_with_attempt(conn, hook.id, status="pending")
    webhooks.update_webhook(conn, "v", hook.id, enabled=False)
    assert conn.execute(
        "select status::text, last_error from outbox.deliveries where id = %s", (queued,)
    ).fetchone() == ("failed", "webhook disabled")


def test_event_type_catalogue_is_extendable(conn: psycopg.Connection[Any]) -> None:
    webhooks.add_event_type(conn, "invoice.paid", "An invoice was paid")
    webhooks.create_webhook(conn, "v", URL, ["invoice.*"])
    with pytest.raises(errors.InvalidEventTypeName):
        webhooks.add_event_type(conn, "bad name!")


def test_queue_stats_view(conn: psycopg.Connection[Any]) -> None:
    hook = webhooks.create_webhook(conn, "v", URL, ["order.created"])
    _delivery_with_attempt(conn, hook.id, status="failed")
    _delivery_with_attempt(conn, hook.id, status="pending")
    row = conn.execute(
        "select owner_id, pending, in_flight, failed, oldest_pending_age is not null from outbox.queue_stats"
    ).fetchone()
    assert row == ("v", 1, 0, 1, True)


async def test_async_wrappers(aconn: psycopg.AsyncConnection[Any]) -> None:
    created = await webhooks.create_webhook_async(aconn, "v", URL, ["order.created"])
    assert [w.id for w in await webhooks.list_webhooks_async(aconn, "v")] == [created.id]
    updated = await webhooks.update_webhook_async(aconn, "v", created.id, enabled=False)
    assert not updated.enabled
    assert (await webhooks.get_webhook_async(aconn, "v", created.id)).enabled is False
    rotated = await webhooks.rotate_webhook_secret_async(aconn, "v", created.id)
    assert rotated.secret != created.secret
    assert await webhooks.replay_failed_async(aconn, "v", created.id, datetime.now(UTC)) == 0
    with pytest.raises(errors.DeliveryNotFound):
        await webhooks.redeliver_async(aconn, 1, "v")
    with pytest.raises(errors.DeliveryNotFound):
        await webhooks.redeliver_any_owner_async(aconn, 1)
    await webhooks.delete_webhook_async(aconn, "v", created.id)
    with pytest.raises(errors.WebhookNotFound):
        await webhooks.get_webhook_async(aconn, "v", created.id)
