"""The delivery path's HTTP client against real loopback servers: the
SSRF pin, no redirects, no decompression, a capped read, verified TLS."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyreqwest.exceptions import PyreqwestError
from yarl import URL

from outbox_worker.client import HttpClient, ResolveError
from outbox_worker.netpolicy import BlockedTarget
from tests.receiver import Receiver
from tests.workers import open_policy, settings

CONFIG = settings("postgresql://")


def never() -> bool:
    return False


def client(**overrides: object) -> HttpClient:
    config = settings("postgresql://", max_response_bytes=16, **overrides)
    return HttpClient(config, open_policy(config))


async def test_a_name_is_pinned_to_the_address_that_was_vetted(receiver: Receiver) -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]  # what a rebinding name would answer first

    url = receiver.url("/pinned").replace("127.0.0.1", "rebind.example")
    async with HttpClient(
        settings("postgresql://"), open_policy(settings("postgresql://")), resolver
    ) as http:
        for _ in range(3):
            answer = await http.post(URL(url), b"{}", {}, never)
            assert answer.status == 200
        assert http.pinned == 1 and asked == ["rebind.example"]  # resolved once, then reused
    assert [r.headers["Host"] for r in receiver.requests] == [URL(url).raw_authority] * 3


async def test_a_name_resolving_only_to_private_addresses_is_refused(receiver: Receiver) -> None:
    url = URL(receiver.url("/private").replace("127.0.0.1", "localhost"))
    async with client(allow_private_networks=False) as http:
        with pytest.raises(BlockedTarget, match="localhost resolves only to refused addresses"):
            await http.post(url, b"{}", {}, never)
    async with client(allow_private_networks=True) as http:
        assert (await http.post(url, b"{}", {}, never)).status == 200
    assert len(receiver.requests) == 1


async def test_an_unknown_name_is_a_resolve_error() -> None:
    async with client() as http:
        with pytest.raises(ResolveError, match="cannot resolve"):
            await http.post(URL("http://no-such-host.invalid/x"), b"{}", {}, never)


async def test_redirects_compression_and_long_answers_are_left_as_they_are(receiver: Receiver) -> None:
    bomb = gzip.compress(b"0" * 10_000_000)

    async def gzipped(_: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    async with client() as http:
        moved = await http.post(URL(receiver.script("/moved", 302)), b"{}", {}, never)
        packed = await http.post(URL(receiver.script("/bomb", gzipped)), b"{}", {}, never)
    assert moved.status == 302 and [r.path for r in receiver.requests] == ["/moved", "/bomb"]
    assert packed.body == bomb[:16]  # read as sent, compressed, and capped
    assert "gzip" not in receiver.requests[1].headers.get("Accept-Encoding", "")


def self_signed(directory: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[str]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/tls", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed(tmp_path))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://localhost:{port}/tls"
    await runner.cleanup()


async def test_tls_certificates_are_verified(tls_server: str) -> None:
    async with client() as http:
        with pytest.raises(PyreqwestError) as refused:
            await http.post(URL(tls_server), b"{}", {}, never)
    assert "certificate" in str(refused.value).lower() or "tls" in str(refused.value).lower()


async def test_a_cancelled_read_past_the_status_keeps_what_arrived(receiver: Receiver) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 8)
        await asyncio.sleep(30)
        return response

    timed_out = False
    async with client() as http:
        task = asyncio.create_task(
            http.post(URL(receiver.script("/t", trickle)), b"{}", {}, lambda: timed_out)
        )
        await receiver.arrived.wait()
        await asyncio.sleep(0.2)  # the status line and the first bytes are in
        timed_out = True
        task.cancel()
        answer = await task
    assert (answer.status, answer.body) == (200, b"x" * 8)


async def test_a_name_is_resolved_again_after_its_ttl_and_keeps_its_client_if_unchanged(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from outbox_worker import client as client_module

    monkeypatch.setattr(client_module, "DNS_TTL", 0.0)
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    url = URL(receiver.url("/again").replace("127.0.0.1", "again.example"))
    async with HttpClient(
        settings("postgresql://"), open_policy(settings("postgresql://")), resolver
    ) as http:
        await http.post(url, b"{}", {}, never)
        first = http._shards[hash(("again.example", url.port)) % client_module.SHARDS].client
        await http.post(url, b"{}", {}, never)
        second = http._shards[hash(("again.example", url.port)) % client_module.SHARDS].client
    assert len(asked) == 2 and first is second  # resolved again, same answer: no rebuild


async def test_names_arriving_together_share_one_rebuild(receiver: Receiver) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    names = [receiver.url(f"/n{i}").replace("127.0.0.1", f"n{i}.example") for i in range(40)]
    async with HttpClient(
        settings("postgresql://"), open_policy(settings("postgresql://")), resolver
    ) as http:
        answers = await asyncio.gather(*(http.post(URL(u), b"{}", {}, never) for u in names))
        assert {a.status for a in answers} == {200} and http.pinned == 40
    assert sorted(r.headers["Host"].split(":")[0] for r in receiver.requests) == sorted(
        f"n{i}.example" for i in range(40)
    )


async def test_answers_of_a_declared_length_are_read_whole_and_reuse_the_connection(
    receiver: Receiver,
) -> None:
    peers: set[object] = set()

    def answering(body: bytes, status: int = 200) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(request: web.Request) -> web.Response:
            peers.add(request.transport.get_extra_info("peername") if request.transport else None)
            return web.Response(body=body, status=status)

        return answer

    async with client() as http:
        empty = await http.post(URL(receiver.script("/empty", answering(b""))), b"{}", {}, never)
        none = await http.post(URL(receiver.script("/none", answering(b"", 204))), b"{}", {}, never)
        short = await http.post(URL(receiver.script("/short", answering(b"ok"))), b"{}", {}, never)
        exact = await http.post(URL(receiver.script("/exact", answering(b"x" * 16))), b"{}", {}, never)
        longer = await http.post(URL(receiver.script("/long", answering(b"y" * 40))), b"{}", {}, never)
        again = await http.post(URL(receiver.script("/again", answering(b"ok"))), b"{}", {}, never)
    assert [(a.status, a.body) for a in (empty, none, short, exact, longer, again)] == [
        (200, b""), (204, b""), (200, b"ok"), (200, b"x" * 16), (200, b"y" * 16), (200, b"ok"),
    ]  # fmt: skip
    assert len(peers) == 1  # every answer ended cleanly: one keep-alive connection served all six


async def test_a_shared_client_checks_each_request_under_its_own_databases_policy(receiver: Receiver) -> None:
    """One client serves a fleet: it vets names under the widest policy, and a
    database whose policy refuses private addresses has its request refused
    even to a name another database's request has just pinned."""
    from outbox_worker.netpolicy import UrlPolicy

    url = URL(receiver.url("/shared").replace("127.0.0.1", "localhost"))
    strict = UrlPolicy.for_worker(CONFIG)
    strict.set_database(allow_http=True, allow_private=False)
    async with HttpClient(CONFIG, open_policy(CONFIG)) as http:
        assert (await http.post(url, b"{}", {}, never, open_policy(CONFIG))).status == 200
        with pytest.raises(BlockedTarget, match="allow_private_networks") as refused:
            await http.post(url, b"{}", {}, never, strict)
        assert refused.value.held  # the database's one switch would allow it: held, not failed
    assert len(receiver.requests) == 1
