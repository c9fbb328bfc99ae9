"""Receivers that misbehave at the byte level cost one attempt and bounded time and memory:
trickles, endless bodies, huge headers, 1xx floods, compression bombs, 101
upgrades, chunk sizes beyond any integer, broken status lines."""

from __future__ import annotations

import asyncio
import gzip
import time
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


async def huge_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(64):  # 4 MB of headers, 64 KB a line
        writer.write(b"X-Huge-%d: %s\r\n" % (i, b"h" * 65536))
        await writer.drain()
    writer.write(b"Content-Length: 0\r\n\r\n")
    await writer.drain()


async def informational_flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # 1xx answers without end: a client that waits for the final one must
    # still give up at the request timeout.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        writer.write(b"HTTP/1.1 102 Processing\r\n\r\n" * 100)
        await writer.drain()
        await asyncio.sleep(0.001)


async def compression_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    bomb = gzip.compress(b"\0" * 20_000_000)  # 20 MB in ~20 KB
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(bomb), bomb)
    )
    await writer.drain()


async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    for _ in range(100):  # then another protocol's bytes, slowly
        writer.write(b"\x81\x05hello")
        await writer.drain()
        await asyncio.sleep(0.05)


async def chunk_size_overflow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"1" * 40 + b"\r\n" + b"z" * 65536)  # a chunk size beyond any integer type
    await writer.drain()


# name: (behaviour, the outcomes allowed after one attempt as (error class or
# "delivered", status code)). Where two are allowed, either is right: what
# matters is one attempt, in bounded time and memory, never a delivery that
# did not happen.
SCRIPTS: dict[str, tuple[Script, set[tuple[str, int | None]]]] = {
    # The status line decided; the body is cut at the timeout.
    "trickle_body": (trickle_body, {("delivered", 200)}),
    "trickle_headers": (trickle_headers, {("timeout", None)}),
    "endless_error_body": (endless_error_body, {("http", 500)}),
    "invalid_status_line": (invalid_status_line, {("connection", None)}),
    "close_mid_headers": (close_mid_headers, {("connection", None)}),
    "huge_headers": (huge_headers, {("connection", None)}),
    "informational_flood": (informational_flood, {("timeout", None), ("connection", None)}),
    # Never decompressed: the 200 counts, and at most 4 KB of the raw bytes are kept.
    "compression_bomb": (compression_bomb, {("delivered", 200)}),
    "upgrade": (upgrade, {("http", 101), ("connection", None)}),
    "chunk_size_overflow": (chunk_size_overflow, {("http", 500), ("connection", None)}),
}


@pytest.fixture
async def hostile() -> AsyncIterator[dict[str, str]]:
    servers = []
    urls = {}
    for name, (script, _) in SCRIPTS.items():

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
                lambda: (
                    conn.execute("select count(*) from outbox.delivery_attempts").fetchone()
                    == (len(SCRIPTS) + 1,)
                ),
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
        for name, (_, allowed) in SCRIPTS.items():
            error_class, status_code, status, body_size, duration_ms = outcome[name]
            if status == "delivered":
                assert ("delivered", status_code) in allowed, (name, outcome[name])
            else:
                assert (error_class, status_code) in allowed, (name, outcome[name])
                assert status == "pending", (name, outcome[name])  # retried later
            assert body_size <= 4096  # what we read and keep is capped
            assert duration_ms < 1600, (name, outcome[name])  # at most the timeout and a tick
    finally:
        await receiver.stop()
