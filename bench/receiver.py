"""The benchmark receiver: a minimal keep-alive HTTP/1.1 server.

Runs in its own process (so its CPU is not the worker's) on a raw asyncio
protocol, on uvloop when installed. It answers every request ``200 OK``
(after ``delay`` seconds, or never when ``hang``), counts requests and the
first/last arrival in shared memory, and, for the latency scenario, reads the
emit wall time the payload carries (``"t":<seconds>``) to record
receipt times against it. The parent asks for them over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
_T_KEY = b'"t":'


class _Stats:
    def __init__(
        self, count: Synchronized[int], first: Synchronized[float], last: Synchronized[float]
    ) -> None:
        self.count = count
        self.first = first
        self.last = last
        self.latencies: list[tuple[float, float]] = []
        self.record_latency = False
        self.connections = 0


def _emit_time(body: bytes) -> float | None:
    start = body.find(_T_KEY)
    if start < 0:
        return None
    start += len(_T_KEY)
    end = start
    while end < len(body) and body[end] in b"0123456789.eE+-":
        end += 1
    try:
        return float(body[start:end])
    except ValueError:
        return None


class _Http(asyncio.Protocol):
    """Parses pipelined requests with Content-Length bodies (all the worker
    and the aiohttp baseline send)."""

    def __init__(self, stats: _Stats, delay: float, hang: bool) -> None:
        self.stats = stats
        self.delay = delay
        self.hang = hang
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.stats.connections += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                line_end = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : line_end if line_end >= 0 else None])
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[head_end + 4 : total])
            del self.buffer[:total]
            self._request(body)

    def _request(self, body: bytes) -> None:
        now = time.time()
        stats = self.stats
        if stats.record_latency:
            emitted = _emit_time(body)
            if emitted is not None:
                stats.latencies.append((emitted, now))
        if stats.count.value == 0:
            stats.first.value = now
        stats.count.value += 1
        stats.last.value = now
        if self.hang:
            return
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_OK)


def _serve(sock: socket.socket, control: Connection, stats: _Stats, delay: float, hang: bool) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Http(stats, delay, hang), sock=sock, backlog=4096)
        done = asyncio.Event()

        def on_control() -> None:
            try:
                command = control.recv()
            except EOFError:
                done.set()
                return
            if command == "connections":
                control.send(stats.connections)
            elif command == "latencies":
                control.send(stats.latencies)
                stats.latencies = []
            elif command == "record":
                stats.latencies = []
                stats.record_latency = True
            elif command == "stop":
                done.set()

        loop.add_reader(control.fileno(), on_control)
        await done.wait()
        server.close()

    asyncio.run(main())


def _child(
    sock: socket.socket,
    control: Connection,
    count: Synchronized[int],
    first: Synchronized[float],
    last: Synchronized[float],
    delay: float,
    hang: bool,
) -> None:
    _serve(sock, control, _Stats(count, first, last), delay, hang)


@dataclass
class Receiver:
    """Handle on a receiver process."""

    url: str
    process: Any
    control: Connection
    _count: Synchronized[int]
    _first: Synchronized[float]
    _last: Synchronized[float]

    @property
    def count(self) -> int:
        return int(self._count.value)

    @property
    def first(self) -> float:
        return float(self._first.value)

    @property
    def last(self) -> float:
        return float(self._last.value)

    def reset(self) -> None:
        self._count.value = 0
        self._first.value = 0.0
        self._last.value = 0.0

    def record_latencies(self) -> None:
        self.control.send("record")

    def latencies(self) -> list[tuple[float, float]]:
        """(emit time the payload carried, receipt time) of each request since ``record_latencies``."""
        self.control.send("latencies")
        result: list[tuple[float, float]] = self.control.recv()
        return result

    def connections(self) -> int:
        """Connections accepted so far (keep-alive check)."""
        self.control.send("connections")
        result: int = self.control.recv()
        return result

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.control.send("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(delay: float = 0.0, hang: bool = False) -> Receiver:
    """A receiver process listening on a free loopback port."""
    ctx = multiprocessing.get_context("spawn")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    count = ctx.Value("q", 0, lock=False)
    first = ctx.Value("d", 0.0, lock=False)
    last = ctx.Value("d", 0.0, lock=False)
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=_child, args=(sock, child, count, first, last, delay, hang), daemon=True, name="bench-receiver"
    )
    process.start()
    sock.close()
    return Receiver(f"http://127.0.0.1:{port}", process, parent, count, first, last)
