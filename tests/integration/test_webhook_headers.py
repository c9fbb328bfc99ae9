"""A webhook's own request headers (receiver authentication) and its rate
limit: validated by the database, header values sealed at rest and never
listed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from outbox_worker import InvalidHeaders, InvalidURL, ReservedHeader, emit, webhooks
from outbox_worker.errors import InvalidRateLimit
from outbox_worker.secretbox import PREFIX, SecretBox, generate_key
from outbox_worker.signing import verify_body_signature
from tests.cli import run
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker, settled

KEY = generate_key()
URL = "https://example.com/hook"
BEARER = {"Authorization": "Bearer s3cr3t-token", "X-Tenant": "t-1"}


def stored_headers(conn: psycopg.Connection[Any], webhook_id: Any = None) -> dict[str, str] | None:
    """As stored: of the one webhook there is, or of ``webhook_id``."""
    row = conn.execute(
        "select headers from outbox.webhooks where id = coalesce(%s, id)", (webhook_id,)
    ).fetchone()
    assert row is not None
    result: dict[str, str] | None = row[0]
    return result


def test_listings_show_the_names_and_the_rate_limit_never_the_values(conn: psycopg.Connection[Any]) -> None:
    created = webhooks.create_webhook(conn, "v", URL, ["*"], headers=BEARER, rate_limit=2.5)
    hook = webhooks.get_webhook(conn, "v", created.id)
    assert hook.header_names == ["Authorization", "X-Tenant"] and hook.rate_limit == Decimal("2.5")
    assert webhooks.list_webhooks(conn, "v") == [hook]
    for reader in (
        "select * from outbox.webhook_info",
        "select * from outbox.list_webhooks('v')",
        f"select * from outbox.get_webhook('v', '{created.id}')",
    ):
        assert "s3cr3t" not in str(conn.execute(reader).fetchall())
    assert stored_headers(conn) == BEARER  # no keys configured: stored as given, like secrets
    plain = webhooks.get_webhook(conn, "v", webhooks.create_webhook(conn, "v", URL, ["*"]).id)
    assert plain.header_names == [] and plain.rate_limit is None


def test_values_are_sealed_before_the_database_sees_them(conn: psycopg.Connection[Any]) -> None:
    box = SecretBox([KEY])
    created = webhooks.create_webhook(conn, "v", URL, ["*"], headers=BEARER, box=box)
    stored = stored_headers(conn)
    assert stored is not None and set(stored) == set(BEARER)
    assert all(v.startswith(PREFIX) and box.open(v) == BEARER[k] for k, v in stored.items())
    webhooks.update_webhook(conn, "v", created.id, headers={"Authorization": "Basic dTpw"}, box=box)
    stored = stored_headers(conn)
    assert stored is not None and list(stored) == ["Authorization"]
    assert box.open(stored["Authorization"]) == "Basic dTpw"
    assert "s3cr3t" not in str(conn.execute("select * from outbox.webhooks").fetchall())


@pytest.mark.parametrize(
    "name",
    [
        "X-Brutlers-Signature", "x-brutlers-signature-previous", "webhook-id", "Webhook-Signature",
        "webhook-anything", "Host", "content-length", "Content-Type", "User-Agent", "traceparent",
        "Transfer-Encoding", "Connection", "Proxy-Authorization",
    ],
)  # fmt: skip
def test_names_the_worker_sets_are_reserved(conn: psycopg.Connection[Any], name: str) -> None:
    with pytest.raises(ReservedHeader, match=f'header "{name}" is reserved: the worker sets it'):
        webhooks.create_webhook(conn, "v", URL, ["*"], headers={name: "x"})
    with pytest.raises(psycopg.Error) as raw:
        conn.execute(
            "select outbox.create_webhook('v', %s, '{*}', headers => %s::jsonb)",
            (URL, json.dumps({name: "x"})),
        )
    assert raw.value.sqlstate == "OW032"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Bad Name": "x"}, 'invalid header name "Bad Name"'),
        ({"": "x"}, 'invalid header name ""'),
        ({"X-A": "x", "x-a": "y"}, '"x-a" appears twice'),
        ({"X-A": 1}, 'invalid value of header "X-A": expected a string, got number'),
        ({"X-A": "a\r\nInjected: yes"}, 'invalid value of header "X-A": 1-4096 printable ASCII'),
        ({"X-A": "ünïcode"}, "printable ASCII"),
        ({"X-A": " padded"}, "no surrounding spaces"),
        ({"X-A": ""}, "printable ASCII"),
        ({"X-A": "x" * 4097}, "1-4096"),
        ({f"X-{i}": "x" for i in range(21)}, "at most 20 headers"),
        ({"X-A": "enc:v1:not sealed"}, "not a sealed value"),
    ],
)
def test_malformed_headers_are_refused(conn: psycopg.Connection[Any], headers: Any, message: str) -> None:
    with pytest.raises(InvalidHeaders, match=message):
        webhooks.create_webhook(conn, "v", URL, ["*"], headers=headers)
    assert conn.execute("select count(*) from outbox.webhooks").fetchone() == (0,)


def test_headers_must_be_an_object(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.Error, match="expected a JSON object of header names to values, got array"):
        conn.execute("select outbox.create_webhook('v', %s, '{*}', headers => '[[\"A\", \"x\"]]')", (URL,))


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", " padded", "", "ü", "x" * 4097])
def test_what_sealing_would_hide_is_checked_before(conn: psycopg.Connection[Any], value: str) -> None:
    with pytest.raises(InvalidHeaders, match='invalid value of header "X-A"'):
        webhooks.create_webhook(conn, "v", URL, ["*"], headers={"X-A": value}, box=SecretBox([KEY]))


@pytest.mark.parametrize("rate", [-1, 0.001, 10001, Decimal("NaN"), Decimal("Infinity")])
def test_rate_limits_out_of_range_are_refused(conn: psycopg.Connection[Any], rate: Any) -> None:
    with pytest.raises(InvalidRateLimit, match="requests per second from 0.01 to 10000"):
        webhooks.create_webhook(conn, "v", URL, ["*"], rate_limit=rate)
    hook = webhooks.create_webhook(conn, "v", URL, ["*"], rate_limit=10)
    with pytest.raises(InvalidRateLimit):
        webhooks.update_webhook(conn, "v", hook.id, rate_limit=rate)
    with pytest.raises(psycopg.errors.CheckViolation):  # and by hand
        conn.execute("update outbox.webhooks set rate_limit = 0")


def test_update_keeps_what_is_not_given_and_zero_or_empty_removes(conn: psycopg.Connection[Any]) -> None:
    hook = webhooks.create_webhook(conn, "v", URL, ["*"], headers=BEARER, rate_limit=5)
    same = webhooks.update_webhook(conn, "v", hook.id, events=["order.*"])
    assert same.header_names == ["Authorization", "X-Tenant"] and same.rate_limit == 5
    replaced = webhooks.update_webhook(conn, "v", hook.id, headers={"X-Other": "1"}, rate_limit=0.5)
    assert replaced.header_names == ["X-Other"] and replaced.rate_limit == Decimal("0.5")
    cleared = webhooks.update_webhook(conn, "v", hook.id, headers={}, rate_limit=0)
    assert cleared.header_names == [] and cleared.rate_limit is None
    assert stored_headers(conn) is None


def test_credentials_in_a_url_point_to_headers(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(InvalidURL) as refused:
        webhooks.create_webhook(conn, "v", "https://user:pass@example.com/hook", ["*"])
    assert "credentials (user:password@) in the URL are not allowed" in refused.value.message
    assert refused.value.hint is not None and '"Authorization": "Basic' in refused.value.hint


async def test_async_wrappers_take_headers_and_rate_limits(aconn: psycopg.AsyncConnection[Any]) -> None:
    created = await webhooks.create_webhook_async(aconn, "v", URL, ["*"], headers={"X-A": "1"}, rate_limit=3)
    box = SecretBox([KEY])
    hook = await webhooks.update_webhook_async(aconn, "v", created.id, headers={"X-B": "2"}, box=box)
    assert hook.header_names == ["X-B"] and hook.rate_limit == 3


async def test_the_worker_sends_them_sealed_or_not_and_seals_plaintext_ones(
    database_url: str, conn: psycopg.Connection[Any], receiver: Receiver
) -> None:
    """Sealed by the wrapper, or given in plaintext from SQL (as from psql):
    both reach the receiver as given, beside an intact signature, and the
    worker seals the plaintext ones."""
    box = SecretBox([KEY])
    by_python = webhooks.create_webhook(
        conn, "v", receiver.url("/sealed"), ["order.created"], headers=BEARER, box=box
    )
    by_sql = conn.execute(
        "select id, secret from outbox.create_webhook('v', %s, '{order.created}', "
        'headers => \'{"Authorization": "Basic dXNlcjpwYXNz"}\')',
        (receiver.url("/plain"),),
    ).fetchone()
    assert by_sql is not None
    emit(conn, "v", "order.created", {"id": 1})
    async with running_worker(database_url, secret_keys=[KEY]):
        await eventually(lambda: settled(database_url, 2), timeout=15)
        await eventually(lambda: "Basic" not in str(stored_headers(conn, by_sql[0])), what="sealed")
    [sent] = receiver.on("/sealed")
    assert (sent.headers["Authorization"], sent.headers["X-Tenant"]) == ("Bearer s3cr3t-token", "t-1")
    assert verify_body_signature(sent.body, sent.headers["X-Brutlers-Signature"], by_python.secret)
    [plain] = receiver.on("/plain")
    assert plain.headers["Authorization"] == "Basic dXNlcjpwYXNz"
    stored = stored_headers(conn, by_sql[0])
    assert stored is not None and {k: box.open(v) for k, v in stored.items()} == {
        "Authorization": "Basic dXNlcjpwYXNz"
    }


def test_reseal_moves_header_values_to_the_new_key(
    database_url: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    webhooks.create_webhook(conn, "v", URL, ["*"], headers=BEARER, box=SecretBox([KEY]))
    new_key = generate_key()
    monkeypatch.setenv("OUTBOX_SECRET_KEYS", json.dumps([new_key, KEY]))
    resealed = run(database_url, "secrets", "reseal")
    assert resealed.returncode == 0, resealed.stderr
    stored = stored_headers(conn)
    assert stored is not None
    assert {k: SecretBox([new_key]).open(v) for k, v in stored.items()} == BEARER  # the old key can go
