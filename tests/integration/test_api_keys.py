"""API keys: the SQL functions, their Python wrappers and the CLI commands."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from outbox_worker import api_keys
from outbox_worker.cli import main
from outbox_worker.errors import ApiKeyNotFound, InvalidApiKeyPrefix, InvalidOwnerId
from tests.helpers import wait_for


def test_a_key_is_returned_once_and_only_its_hash_is_stored(conn: psycopg.Connection[Any]) -> None:
    created = api_keys.create_api_key(conn, "vendor-1")

    assert re.fullmatch(r"brut_[0-9a-f]{64}", created.key)
    assert created.key not in repr(created)
    row = conn.execute(
        "select key_hash, display_prefix, row_to_json(k)::text from outbox.api_keys k"
    ).fetchone()
    assert row is not None
    assert row[0] == hashlib.sha256(created.key.encode()).digest() == api_keys.key_hash(created.key)
    assert row[1] == created.key[:13]
    assert created.key not in row[2]
    assert created.key[13:] not in row[2]


def test_keys_are_distinct_and_map_to_their_owner(conn: psycopg.Connection[Any]) -> None:
    first, second = api_keys.create_api_key(conn, "vendor-1"), api_keys.create_api_key(conn, "vendor-2")

    assert first.key != second.key
    assert api_keys.api_key_owner(conn, first.key) == "vendor-1"
    assert api_keys.api_key_owner(conn, second.key) == "vendor-2"


@pytest.mark.parametrize(
    "presented",
    ["", "brut_" + "0" * 64, "brut_", "x" * 100_000, "brut_é" + "0" * 63, "brut_\ud800", "brut_\x00"],
)
def test_unknown_or_malformed_keys_have_no_owner(conn: psycopg.Connection[Any], presented: str) -> None:
    api_keys.create_api_key(conn, "vendor-1")

    assert api_keys.api_key_owner(conn, presented) is None


def test_a_revoked_key_has_no_owner_and_revoking_is_idempotent(conn: psycopg.Connection[Any]) -> None:
    created = api_keys.create_api_key(conn, "vendor-1")
    kept = api_keys.create_api_key(conn, "vendor-1")

    revoked = api_keys.revoke_api_key(conn, created.id, "vendor-1")
    again = api_keys.revoke_api_key(conn, str(created.id), "vendor-1")

    assert revoked.revoked_at is not None
    assert again.revoked_at == revoked.revoked_at
    assert api_keys.api_key_owner(conn, created.key) is None
    assert api_keys.api_key_owner(conn, kept.key) == "vendor-1"
    listed = api_keys.list_api_keys(conn, "vendor-1")
    assert [(k.id, k.revoked_at is not None) for k in listed] == [(created.id, True), (kept.id, False)]


def test_revoking_an_unknown_or_anothers_key_is_not_found(conn: psycopg.Connection[Any]) -> None:
    created = api_keys.create_api_key(conn, "vendor-1")

    for key_id, owner in ((uuid.uuid4(), "vendor-1"), ("not-a-uuid", "vendor-1"), (created.id, "vendor-2")):
        with pytest.raises(ApiKeyNotFound):
            api_keys.revoke_api_key(conn, key_id, owner)
    with pytest.raises(ApiKeyNotFound):
        api_keys.revoke_api_key_any_owner(conn, uuid.uuid4())
    assert api_keys.api_key_owner(conn, created.key) == "vendor-1"
    assert api_keys.revoke_api_key(conn, created.id, "vendor-1").revoked_at is not None


def test_revoking_needs_the_owner_and_operators_say_any_owner(conn: psycopg.Connection[Any]) -> None:
    created = api_keys.create_api_key(conn, "vendor-1")
    # The owner once defaulted to NULL, "any owner": anyone's key could be revoked by id.
    with pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("select outbox.revoke_api_key(%s)", (created.id,))
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("select outbox.revoke_api_key(%s, null)", (created.id,))
    assert refused.value.sqlstate == "OW001"
    for wrapper in (api_keys.revoke_api_key, api_keys.revoke_api_key_async):
        assert inspect.signature(wrapper).parameters["owner_id"].default is inspect.Parameter.empty
    assert api_keys.api_key_owner(conn, created.key) == "vendor-1"
    assert api_keys.revoke_api_key_any_owner(conn, created.id).owner_id == "vendor-1"
    assert api_keys.api_key_owner(conn, created.key) is None


@pytest.mark.parametrize("prefix", ["sk_live_", "", "a-b_C9"])
def test_the_prefix_is_configurable(conn: psycopg.Connection[Any], prefix: str) -> None:
    created = api_keys.create_api_key(conn, "vendor-1", prefix)

    assert re.fullmatch(re.escape(prefix) + "[0-9a-f]{64}", created.key)
    assert api_keys.list_api_keys(conn, "vendor-1")[0].display_prefix == created.key[: len(prefix) + 8]


@pytest.mark.parametrize("prefix", ["with space", "x" * 33, "new\nline", "ü_"])
def test_header_unsafe_prefixes_are_refused(conn: psycopg.Connection[Any], prefix: str) -> None:
    with pytest.raises(InvalidApiKeyPrefix):
        api_keys.create_api_key(conn, "vendor-1", prefix)
    assert conn.execute("select count(*) from outbox.api_keys").fetchone() == (0,)


@pytest.mark.parametrize("owner", ["", " padded", "x" * 256, "line\nbreak"])
def test_invalid_owners_are_refused(conn: psycopg.Connection[Any], owner: str) -> None:
    with pytest.raises(InvalidOwnerId):
        api_keys.create_api_key(conn, owner)
    with pytest.raises(InvalidOwnerId):
        api_keys.list_api_keys(conn, owner)


def test_psql_users_check_a_key_by_its_hash(conn: psycopg.Connection[Any]) -> None:
    created = api_keys.create_api_key(conn, "vendor-1")

    row = conn.execute(
        "select outbox.api_key_owner(sha256(convert_to(%s, 'UTF8')))", (created.key,)
    ).fetchone()

    assert row == ("vendor-1",)


async def test_the_async_wrappers(aconn: psycopg.AsyncConnection[Any]) -> None:
    created = await api_keys.create_api_key_async(aconn, "vendor-1", "t_")

    assert await api_keys.api_key_owner_async(aconn, created.key) == "vendor-1"
    assert await api_keys.api_key_owner_async(aconn, "") is None
    assert [k.id for k in await api_keys.list_api_keys_async(aconn, "vendor-1")] == [created.id]
    assert (await api_keys.revoke_api_key_async(aconn, created.id, "vendor-1")).revoked_at is not None
    assert await api_keys.api_key_owner_async(aconn, created.key) is None


# -- the CLI --------------------------------------------------------------------------


def run_cli(database_url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(
        main, ["--database-url", database_url, *args], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result


def test_cli_create_list_revoke(database_url: str, conn: psycopg.Connection[Any]) -> None:
    created = json.loads(run_cli(database_url, "--json", "api-keys", "create", "--owner", "vendor-1").output)[
        0
    ]
    prefixed = json.loads(
        run_cli(
            database_url,
            "--json",
            "api-keys",
            "create",
            "--owner",
            "vendor-1",
            env={"OUTBOX_API_KEY_PREFIX": "acme_"},
        ).output
    )[0]

    assert re.fullmatch(r"brut_[0-9a-f]{64}", created["key"])
    assert re.fullmatch(r"acme_[0-9a-f]{64}", prefixed["key"])
    assert api_keys.api_key_owner(conn, created["key"]) == "vendor-1"
    listing = run_cli(database_url, "--json", "api-keys", "list", "--owner", "vendor-1").output
    assert created["key"] not in listing and prefixed["key"] not in listing
    assert [(k["id"], k["prefix"], k["revoked_at"]) for k in json.loads(listing)] == [
        (created["id"], created["key"][:13], None),
        (prefixed["id"], prefixed["key"][:13], None),
    ]
    table = run_cli(database_url, "api-keys", "list", "--owner", "vendor-1").output
    assert created["key"][:13] in table and created["key"] not in table

    unowned = CliRunner().invoke(main, ["--database-url", database_url, "api-keys", "revoke", created["id"]])
    assert unowned.exit_code == 2 and "give --owner OWNER, or --any-owner" in unowned.output
    theirs = ["api-keys", "revoke", created["id"], "--owner", "vendor-2"]
    assert CliRunner().invoke(main, ["--database-url", database_url, *theirs]).exit_code == 1
    revoked = run_cli(database_url, "api-keys", "revoke", created["id"], "--owner", "vendor-1").output
    assert run_cli(database_url, "api-keys", "revoke", prefixed["id"], "--any-owner").exit_code == 0
    run_cli(database_url, "api-keys", "create", "--owner", "vendor-1")

    assert created["id"] in revoked
    assert api_keys.api_key_owner(conn, created["key"]) is None
    assert api_keys.api_key_owner(conn, prefixed["key"]) is None
    after = json.loads(run_cli(database_url, "--json", "api-keys", "list", "--owner", "vendor-1").output)
    assert [k["revoked_at"] is not None for k in after] == [True, True, False]


def test_cli_issues_operator_keys(database_url: str, conn: psycopg.Connection[Any]) -> None:
    operator = json.loads(run_cli(database_url, "--json", "api-keys", "create", "--operator").output)[0]
    assert operator["owner"] == "operator" and operator["operator"] is True
    named = json.loads(
        run_cli(database_url, "--json", "api-keys", "create", "--operator", "--owner", "ops").output
    )[0]
    vendor = json.loads(run_cli(database_url, "--json", "api-keys", "create", "--owner", "v").output)[0]
    flags = dict(conn.execute("select id::text, operator from outbox.api_keys").fetchall())
    assert flags == {operator["id"]: True, named["id"]: True, vendor["id"]: False}
    # The HTTP API acts for an operator key's own owner, like any key's.
    assert api_keys.api_key_owner(conn, named["key"]) == "ops"
    neither = CliRunner().invoke(main, ["--database-url", database_url, "api-keys", "create"])
    assert neither.exit_code == 2 and "give --owner OWNER (or --operator" in neither.output


def test_cli_errors_are_one_line(database_url: str) -> None:
    runner = CliRunner()
    unknown = runner.invoke(
        main, ["--database-url", database_url, "api-keys", "revoke", str(uuid.uuid4()), "--any-owner"]
    )
    bad_owner = runner.invoke(main, ["--database-url", database_url, "api-keys", "create", "--owner", " x"])

    assert unknown.exit_code == 1
    assert "API key" in unknown.output and "not found" in unknown.output
    assert bad_owner.exit_code == 1
    assert "invalid owner id" in bad_owner.output


def test_cli_api_serves_the_vendor_api_request_with_a_cli_issued_key(database_url: str) -> None:
    created = run_cli(database_url, "--json", "api-keys", "create", "--owner", "vendor-1")
    key = json.loads(created.output)[0]["key"]
    # Port 0: the server picks a free port and logs it, so parallel workers never race for one.
    command = [
        sys.executable,
        "-m",
        "outbox_worker.cli",
        "--database-url",
        database_url,
        "api",
        "--port",
        "0",
    ]
    server = subprocess.Popen(
        command,
        env={**os.environ, "OUTBOX_LOG_LEVEL": "info"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout or ()), daemon=True)
    reader.start()

    def address() -> str | None:
        assert server.poll() is None, "".join(lines)
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", "".join(lines))
        return found.group(1) if found else None

    try:
        base = wait_for(address, timeout=20, what="outbox-worker api to start")
        r = httpx.post(
            f"{base}/api/vendor/webhooks",
            headers={"X-Api-Key": key, "Content-Type": "application/json"},
            content=b'{\n"url": "https://meine-app.de/webhooks/brutlers",\n'
            b'"events": ["order.created", "order.status_changed"]\n}',
        )
        assert r.status_code == 201, r.text
        assert r.json()["secret"].startswith("whsec_")
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it got.
        status = server.wait(timeout=20)
        reader.join(timeout=5)
        server.stdout.close()
    assert status == -signal.SIGTERM
    assert "Application shutdown complete" in "".join(lines)
    assert "Traceback" not in "".join(lines)
