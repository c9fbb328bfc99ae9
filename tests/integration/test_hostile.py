"""Receivers that misbehave at the byte level cost one attempt and bounded time and memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest

from outbox_worker import emit, webhooks
from tests.helpers import eventually
from tests.receiver import Receiver
from tests.workers import running_worker

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _drain_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    await reader.readexactly(length)


async def trickle_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(1000):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)


async def trickle_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.05)


async def endless_error_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"z" * 65536
    while True:
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


async def invalid_status_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HELLO THERE\r\n\r\n")
    await writer.drain()


async def close_mid_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
    await writer.drain()


SCRIPTS: dict[str, tuple[Script, str, int | None]] = {
    # name: (behaviour, expected delivery status after one attempt, expected status code)
    "trickle_body": (
        trickle_body,
        "delivered",
        200,
    ),  # the status line decided; the body is cut at the timeout
    "trickle_headers": (trickle_headers, "timeout", None),
    "endless_error_body": (endless_error_body, "http", 500),
    "invalid_status_line": (invalid_status_line, "connection", None),
    "close_mid_headers": (close_mid_headers, "connection", None),
}


@pytest.fixture
async def hostile() -> AsyncIterator[dict[str, str]]:
    servers = []
    urls = {}
    for name, (script, _, _) in SCRIPTS.items():

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: Script = script
        ) -> None:
            try:
                await _drain_request(reader)
                await script(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        urls[name] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/{name}"
    yield urls
    for server in servers:
        server.close()


async def test_hostile_receivers_cost_one_bounded_attempt(
    database_url: str, conn: psycopg.Connection[Any], hostile: dict[str, str]
) -> None:
    receiver = await Receiver().start()
    try:
        for name, url in hostile.items():
            webhooks.create_webhook(conn, name, url, ["order.created"])
            emit(conn, name, "order.created", {"for": name})
        webhooks.create_webhook(conn, "healthy", receiver.url("/ok"), ["order.created"])
        async with running_worker(database_url, request_timeout=1.0, retry_schedule=[60, 60, 60]):
            emit(conn, "healthy", "order.created", {"while": "others misbehave"})
            await eventually(
                lambda: conn.execute("select count(*) from outbox.delivery_attempts").fetchone() == (6,),
                timeout=20,
                what="one attempt per receiver",
            )
        rows = conn.execute(
            "select owner_id, error_class, status_code, delivery_status::text, "
            "length(coalesce(response_body, '')), duration_ms from outbox.delivery_log"
        ).fetchall()
        outcome = {owner: row for owner, *row in rows}
        assert outcome["healthy"][2] == "delivered"
        # The trickling receivers are cut by the timeout sweep: at the
        # request timeout (1 s), at most a tick (0.25 s) later; the rest
        # allows for a loaded CI machine.
        for name in ("trickle_body", "trickle_headers"):
            assert 1000 <= outcome[name][4] < 1600, (name, outcome[name])
        for name, (_, expected, code) in SCRIPTS.items():
            error_class, status_code, status, body_size, _ = outcome[name]
            if expected == "delivered":
                assert (status, status_code) == ("delivered", code)
            else:
                assert (error_class, status_code, status) == (expected, code, "pending")  # retried later
            assert body_size <= 4096  # what we read and keep is capped
    finally:
        await receiver.stop()
