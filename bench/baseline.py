"""The raw clients alone (aiohttp, and the worker's pyreqwest): the ceilings a
worker works under, measured in the same run as it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from typing import Any

import psutil

from bench import receiver as receiver_mod
from bench.harness import EVENT
from outbox_worker.signing import encode_body, sign_headers

# ------------------------------------------------------------------ baseline


def _baseline_child(
    url: str, count: int, limit: int, per_host: int, payload: str | None, result: Any, client: str = "aiohttp"
) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    import aiohttp

    from outbox_worker.signing import load_payload

    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo3ODkwMTI="
    now = time.time()
    from datetime import UTC, datetime

    created = datetime.now(UTC)
    requests = []
    for i in range(count):
        data = load_payload(payload or json.dumps({"id": f"ord_{i}", "total": i % 1000, "currency": "EUR"}))
        body = encode_body(EVENT, data, created)
        headers = sign_headers(
            event_id=i,
            body=body,
            secrets=(secret,),
            timestamp=int(now),
            signature_header="X-Brutlers-Signature",
        )
        headers["Content-Type"] = "application/json"
        requests.append((body, headers))

    # The worker's own collector settings: untuned, collections walking the
    # requests in flight took a third of this client's CPU at 1,000 in flight.
    from outbox_worker.worker import tune_gc

    tune_gc(limit)

    async def with_aiohttp() -> float:
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=per_host)
        async with aiohttp.ClientSession(connector=connector) as session:
            queue = iter(requests)

            async def lane() -> None:
                for body, headers in queue:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()

            proc = psutil.Process()
            cpu0 = sum(proc.cpu_times()[:2])
            await asyncio.gather(*(lane() for _ in range(limit)))
            return float(sum(proc.cpu_times()[:2]) - cpu0)

    async def with_pyreqwest() -> float:
        from pyreqwest.client import ClientBuilder

        async with ClientBuilder().follow_redirects(False).max_connections(limit).build() as http:
            queue = iter(requests)

            async def lane() -> None:
                for body, headers in queue:
                    request = http.post(url).body_bytes(body).headers(headers).build_streamed()
                    async with request as resp:
                        await resp.body_reader.read(4096)

            proc = psutil.Process()
            cpu0 = sum(proc.cpu_times()[:2])  # the process's threads: tokio's included
            await asyncio.gather(*(lane() for _ in range(limit)))
            return float(sum(proc.cpu_times()[:2]) - cpu0)

    cpu = asyncio.run(with_aiohttp() if client == "aiohttp" else with_pyreqwest())
    result.put(cpu / count * 1000)  # the rate is read off the receiver


def baseline(
    recv: receiver_mod.Receiver,
    count: int,
    limit: int = 256,
    per_host: int = 32,
    payload: dict[str, Any] | None = None,
    client: str = "aiohttp",
) -> tuple[float, float]:
    """A raw client (aiohttp, or the worker's pyreqwest), pre-signed bodies,
    no database: (requests/s, CPU ms/request). The rate is read off the
    receiver, first to last arrival, the window ``drain`` measures the
    workers by."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    recv.reset()
    text = json.dumps(payload) if payload is not None else None
    proc = ctx.Process(
        target=_baseline_child, args=(recv.url + "/baseline", count, limit, per_host, text, queue, client)
    )
    proc.start()
    cpu_ms = queue.get(timeout=600)
    proc.join()
    return count / max(recv.last - recv.first, 1e-9), float(cpu_ms)
