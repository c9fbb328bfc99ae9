"""The delivery path's HTTP client: pyreqwest (Rust's reqwest, hyper and
tokio) behind one small surface, with the send-time half of the SSRF guard.

Why pyreqwest: against the bench's receiver it sent the same signed POSTs
at about twice aiohttp's rate for half its CPU per request
(docs/performance.md); aiohttp's own request path was half of a worker's
CPU. What a worker must keep, it keeps here:

- No DNS rebinding window: a hostname is resolved here, every address is
  vetted (``netpolicy.is_blocked``), and the client that sends to it is
  pinned to the vetted address (``ClientBuilder.resolve``), so the
  connection goes where the check looked. pyreqwest takes only static pins
  per client, hence one client per (host, port), kept for ``DNS_TTL``
  seconds and rebuilt when the name resolves elsewhere. IP literals need no
  pin and share one client.
- No redirects followed, no proxy from the environment, no cookies, no
  decompression (a compression bomb stays compressed and capped).
- The connect timeout and the whole-request timeout are reqwest's (the
  sender's sweep still bounds every attempt).
- At most ``max_response_bytes`` of a response body is read; the rest never
  reaches memory.
- TLS is verified, with SNI set to the URL's hostname (the pin changes the
  address, not the name).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.response import ResponseBodyReader
from yarl import URL

from outbox_worker.netpolicy import BlockedTarget, is_blocked
from outbox_worker.settings import Settings

# How long a name's vetted address (and its pinned client) is reused before
# it is resolved again; aiohttp's DNS cache kept names as long.
DNS_TTL = 30.0
# Origins with a pinned client at most; past it the least recently built
# ones are dropped (their connections close once their requests end).
MAX_PINNED = 4096


class ResolveError(OSError):
    """The receiver's name did not resolve."""


@dataclass(slots=True)
class Answer:
    """What an attempt needs of a response."""

    status: int
    body: bytes  # at most max_response_bytes
    retry_after: str | None


@dataclass(slots=True)
class _Pinned:
    client: Client
    address: str
    expires: float


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, as the operating system answers."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolveError(f"cannot resolve {host}: {exc.strerror}") from exc
    return [str(info[4][0]) for info in infos]


class HttpClient:
    def __init__(self, settings: Settings, resolver: Resolver = system_resolver) -> None:
        self._settings = settings
        self._resolver = resolver
        self._allow_private = settings.allow_private_networks
        self._limit = settings.max_response_bytes
        self._shared = self._builder().build()  # for IP literals: nothing to pin
        self._pinned: dict[tuple[str, int], _Pinned] = {}
        self._resolving: dict[tuple[str, int], asyncio.Future[_Pinned]] = {}

    def _builder(self) -> ClientBuilder:
        settings = self._settings
        return (
            ClientBuilder()
            .follow_redirects(False)
            .no_proxy()
            .default_cookie_store(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .user_agent(settings.user_agent)
            .connect_timeout(timedelta(seconds=settings.connect_timeout))
            .timeout(timedelta(seconds=settings.request_timeout))
        )

    async def post(
        self, url: URL, body: bytes, headers: dict[str, str], timed_out: Callable[[], bool]
    ) -> Answer:
        """POST ``body``; raises BlockedTarget, ResolveError or pyreqwest's
        errors (its timeouts are ``TimeoutError`` subclasses). Once the
        status line has arrived, an attempt's timeout (reqwest's, or the
        sender's sweep, which ``timed_out`` tells from shutdown) only cuts
        the body short."""
        client = await self._client_for(url)
        request = client.post(str(url)).body_bytes(body).headers(headers)
        # A buffer limit of 0: the response is handed over at its status
        # line; with any other, pyreqwest first waits for that many body bytes.
        async with request.streamed_read_buffer_limit(0).build_streamed() as response:
            status = response.status
            retry_after = response.get_header("retry-after")
            return Answer(status, await self._read(response.body_reader, timed_out), retry_after)

    async def _read(self, reader: ResponseBodyReader, timed_out: Callable[[], bool]) -> bytes:
        chunks: list[bytes] = []
        remaining = self._limit
        try:
            while remaining > 0:
                chunk = await reader.read_chunk()  # what has arrived; read(n) waits for all n
                if chunk is None:
                    break
                data = bytes(chunk)[:remaining]
                chunks.append(data)
                remaining -= len(data)
        except (PyreqwestError, TimeoutError, OSError):
            pass  # the status already decided the outcome; keep what arrived
        except asyncio.CancelledError:
            if not timed_out():
                raise
        return b"".join(chunks)

    async def _client_for(self, url: URL) -> Client:
        host = url.host or ""
        try:
            ipaddress.ip_address(host.strip("[]"))
            return self._shared  # a literal: check_url vetted it already
        except ValueError:
            pass
        key = (host, url.port or (443 if url.scheme == "https" else 80))
        pinned = self._pinned.get(key)
        if pinned is not None and pinned.expires > time.monotonic():
            return pinned.client
        waiting = self._resolving.get(key)
        if waiting is not None:  # one resolution per name at a time
            return (await asyncio.shield(waiting)).client
        future: asyncio.Future[_Pinned] = asyncio.get_running_loop().create_future()
        self._resolving[key] = future
        try:
            fresh = await self._pin(key, pinned)
            future.set_result(fresh)
            return fresh.client
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._resolving[key]

    async def _pin(self, key: tuple[str, int], old: _Pinned | None) -> _Pinned:
        host, port = key
        addresses = await self._resolver(host, port)
        allowed = [a for a in addresses if self._allow_private or not is_blocked(ipaddress.ip_address(a))]
        if not allowed:
            raise BlockedTarget(f"{host} resolves only to private or reserved addresses")
        expires = time.monotonic() + DNS_TTL
        if old is not None and old.address in allowed:
            old.expires = expires  # same answer: keep the client and its connections
            return old
        client = self._builder().resolve(host, allowed[0], port).build()
        if len(self._pinned) >= MAX_PINNED:
            del self._pinned[next(iter(self._pinned))]
        self._pinned.pop(key, None)
        pinned = self._pinned[key] = _Pinned(client, allowed[0], expires)
        return pinned

    @property
    def pinned(self) -> int:
        """Origins with a pinned client now (for metrics and tests)."""
        return len(self._pinned)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        clients = [self._shared, *(p.client for p in self._pinned.values())]
        self._pinned.clear()
        for client in clients:
            await client.close()
