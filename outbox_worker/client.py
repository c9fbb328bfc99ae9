"""The delivery path's HTTP client: pyreqwest (Rust's reqwest, hyper and
tokio) behind one small surface, with the send-time half of the SSRF guard.

Why pyreqwest: against the bench's receiver it sent the same signed POSTs
at about twice aiohttp's rate for half its CPU per request
(docs/performance.md); aiohttp's own request path was half of a worker's
CPU. What a worker must keep, it keeps here:

- No DNS rebinding window: a hostname is resolved here, every address is
  vetted (``UrlPolicy.refuse``), and the client that sends to it is
  pinned to the vetted address (``ClientBuilder.resolve``), so the
  connection goes where the check looked. pyreqwest takes only static pins,
  fixed when a client is built, and building one costs ~6 ms of CPU and
  ~150 KB (its TLS set-up): a client per name cost 6 s and 150 MB for 1,000
  names. So names are spread over ``SHARDS`` clients, each pinned to the
  names of its shard; a new name, or one that resolves elsewhere after
  ``DNS_TTL``, rebuilds its shard's client once for every name that came
  in meanwhile (the old client finishes its requests; its idle connections
  go). IP literals need no pin and share one client.
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

from outbox_worker.netpolicy import BlockedTarget, UrlPolicy
from outbox_worker.settings import Settings

# How long a name's vetted address is used before it is resolved again
# (aiohttp's DNS cache kept names as long).
DNS_TTL = 30.0
SHARDS = 16
# A rebuild waits this long for the other new names of a burst (a worker
# starting against 1,000 receivers), so that one build pins them all.
GATHER = 0.005
# A name not resolved again for this long has not been used: its pin goes
# at its shard's next rebuild.
IDLE = 600.0


class ResolveError(OSError):
    """The receiver's name did not resolve."""


@dataclass(slots=True)
class Answer:
    """What an attempt needs of a response."""

    status: int
    body: bytes  # at most max_response_bytes
    retry_after: str | None


@dataclass(slots=True)
class _Pin:
    address: str
    expires: float  # resolve again after this (monotonic clock)


class _Shard:
    """One client and the names it is pinned for."""

    __slots__ = ("built", "client", "pins", "rebuild")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.pins: dict[tuple[str, int], _Pin] = {}
        self.built: dict[tuple[str, int], str] = {}  # what ``client`` is pinned to
        self.rebuild: asyncio.Future[Client] | None = None


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, as the operating system answers."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolveError(f"cannot resolve {host}: {exc.strerror}") from exc
    return [str(info[4][0]) for info in infos]


def _check(policy: UrlPolicy, host: str, address: str) -> None:
    """Refuse ``address``, which ``host`` resolved to, if ``policy`` does."""
    if refused := policy.refuse(ipaddress.ip_address(address)):
        raise BlockedTarget(f"{host} resolves to a refused address: {refused}", held=refused.held)


def _content_length(value: str | None) -> int | None:
    """A response's declared body length, or None when absent or unreadable."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


class HttpClient:
    def __init__(self, settings: Settings, policy: UrlPolicy, resolver: Resolver = system_resolver) -> None:
        self._settings = settings
        self._resolver = resolver
        self._policy = policy
        # Names vetted under the old policy are vetted again under the new.
        policy.on_change(self.forget_names)
        self._limit = settings.max_response_bytes
        self._shared = self._builder().build()  # for IP literals: nothing to pin
        self._shards = [_Shard(self._shared) for _ in range(SHARDS)]
        self._resolving: dict[tuple[str, int], asyncio.Future[str]] = {}
        self._literals: dict[str, bool] = {}

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
        self,
        url: URL,
        body: bytes,
        headers: dict[str, str],
        timed_out: Callable[[], bool],
        policy: UrlPolicy | None = None,
    ) -> Answer:
        """POST ``body``; raises BlockedTarget, ResolveError or pyreqwest's
        errors (its timeouts are ``TimeoutError`` subclasses). Once the
        status line has arrived, an attempt's timeout (reqwest's, or the
        sender's sweep, which ``timed_out`` tells from shutdown) only cuts
        the body short. ``policy``: the sending database's, when this client
        serves several (it vets names under the widest; each request's address
        is then checked under its own database's)."""
        client = await self._client_for(url, policy)
        request = client.post(str(url)).body_bytes(body).headers(headers)
        # A buffer limit of 0: the response is handed over at its status
        # line; with any other, pyreqwest first waits for that many body bytes.
        async with request.streamed_read_buffer_limit(0).build_streamed() as response:
            status = response.status
            retry_after = response.get_header("retry-after")
            length = _content_length(response.get_header("content-length"))
            if length == 0:  # each read is a hop to the client's thread and back
                return Answer(status, b"", retry_after)
            return Answer(status, await self._read(response.body_reader, timed_out, length), retry_after)

    async def _read(
        self, reader: ResponseBodyReader, timed_out: Callable[[], bool], length: int | None
    ) -> bytes:
        """Up to the response limit of the body; with a known ``length``, no
        read past it only to learn that the body has ended."""
        chunks: list[bytes] = []
        remaining = self._limit if length is None else min(self._limit, length)
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

    async def _client_for(self, url: URL, policy: UrlPolicy | None = None) -> Client:
        host = url.host or ""
        if self._is_literal(host):
            return self._shared  # a literal: check_url vetted it already
        key = (host, url.port or (443 if url.scheme == "https" else 80))
        shard = self._shards[hash(key) % SHARDS]
        pin = shard.pins.get(key)
        if pin is not None and pin.expires > time.monotonic() and shard.built.get(key) == pin.address:
            if policy is not None and policy is not self._policy:
                _check(policy, host, pin.address)
            return shard.client
        address = await self._vetted(key, pin)
        if policy is not None and policy is not self._policy:
            _check(policy, host, address)
        if shard.built.get(key) == address:
            return shard.client
        return await self._rebuilt(shard)

    def _is_literal(self, host: str) -> bool:
        """Whether ``host`` is an IP address, remembered: parsing one on
        every request was 3.6% of a worker's main thread (py-spy)."""
        literal = self._literals.get(host)
        if literal is None:
            try:
                ipaddress.ip_address(host.strip("[]"))
                literal = True
            except ValueError:
                literal = False
            if len(self._literals) >= 4096:
                self._literals.clear()
            self._literals[host] = literal
        return literal

    async def _vetted(self, key: tuple[str, int], pin: _Pin | None) -> str:
        """The address ``key``'s requests go to, resolved and vetted now (one
        resolution per name at a time); the pinned one while it is still
        among the answers, so that its connections stay."""
        waiting = self._resolving.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._resolving[key] = future
        try:
            host, port = key
            addresses = await self._resolver(host, port)
            refusals = [self._policy.refuse(ipaddress.ip_address(a)) for a in addresses]
            allowed = [a for a, refused in zip(addresses, refusals, strict=True) if refused is None]
            if not allowed:
                first = next(r for r in refusals if r is not None)
                # Held only if the one switch could open every address it resolves to.
                held = all(r is not None and r.held for r in refusals)
                raise BlockedTarget(f"{host} resolves only to refused addresses: {first}", held=held)
            address = pin.address if pin is not None and pin.address in allowed else allowed[0]
            self._shards[hash(key) % SHARDS].pins[key] = _Pin(address, time.monotonic() + DNS_TTL)
            future.set_result(address)
            return address
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._resolving[key]

    async def _rebuilt(self, shard: _Shard) -> Client:
        """The shard's client rebuilt with every pin it holds now; the names
        that arrive while a rebuild gathers share it."""
        if shard.rebuild is not None:
            return await asyncio.shield(shard.rebuild)
        future: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        shard.rebuild = future
        try:
            await asyncio.sleep(GATHER)
            stale = time.monotonic() - IDLE
            for key in [k for k, p in shard.pins.items() if p.expires < stale]:
                del shard.pins[key]
            builder = self._builder()
            for (host, port), pin in shard.pins.items():
                builder = builder.resolve(host, pin.address, port)
            shard.client = builder.build()
            shard.built = {key: pin.address for key, pin in shard.pins.items()}
            future.set_result(shard.client)
            return shard.client
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            shard.rebuild = None

    def forget_names(self) -> None:
        """Vet every name again before its next request (the policy changed):
        its pin expires now; the clients keep their connections."""
        for shard in self._shards:
            for pin in shard.pins.values():
                pin.expires = 0.0

    @property
    def pinned(self) -> int:
        """Names pinned now (for metrics and tests)."""
        return sum(len(shard.built) for shard in self._shards)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        clients = {id(c): c for c in (self._shared, *(shard.client for shard in self._shards))}
        for shard in self._shards:
            shard.client = self._shared
            shard.built.clear()
        for client in clients.values():
            await client.close()
