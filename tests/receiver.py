"""A real HTTP receiver on loopback for worker tests.

Records every request (path, headers, raw body, arrival time) and answers
per path from a script of behaviours: a status code, a redirect, a hang,
or a callable. Unscripted requests get 200.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from outbox_worker.loopback import serve_on_loopback

Behaviour = int | str | Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]  # as a receiver reads them: names are case-insensitive
    body: bytes
    at: float  # time.perf_counter()
    wall: float  # time.time()


class Held:
    """A behaviour answering 200 once ``until()`` returns, counting the
    requests inside it now (``running``) and at most at once (``peak``)."""

    def __init__(self, until: Callable[[], Awaitable[object]]) -> None:
        self.running = 0
        self.peak = 0
        self._until = until

    async def __call__(self, request: web.Request) -> web.Response:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self._until()
        finally:
            self.running -= 1
        return web.Response(text="ok")


@dataclass
class Receiver:
    scripts: dict[str, list[Behaviour]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    base_url: str = ""
    _runner: web.AppRunner | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def script(self, path: str, *behaviours: Behaviour) -> str:
        """Answer the next requests to ``path`` with ``behaviours`` in turn (then 200)."""
        self.scripts[path] = list(behaviours)
        return self.base_url + path

    def slow(self, seconds: float) -> tuple[Behaviour, asyncio.Event]:
        """A behaviour answering 200 after ``seconds``, and an event set when a request enters it."""
        entered = asyncio.Event()

        async def answer(request: web.Request) -> web.Response:
            entered.set()
            await asyncio.sleep(seconds)
            return web.Response(text="slow")

        return answer, entered

    def url(self, path: str) -> str:
        return self.base_url + path

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(request.path, CIMultiDict(request.headers), body, time.perf_counter(), time.time())
        )
        self.arrived.set()
        script = self.scripts.get(request.path)
        behaviour: Behaviour = script.pop(0) if script else 200
        if callable(behaviour):
            return await behaviour(request)
        if behaviour == "hang":
            await asyncio.sleep(3600)
        if isinstance(behaviour, int):
            if 300 <= behaviour < 400:
                return web.Response(status=behaviour, headers={"Location": self.base_url + "/elsewhere"})
            return web.Response(status=behaviour, text=f"answer {behaviour}")
        raise ValueError(behaviour)

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.base_url = await serve_on_loopback(app, shutdown_timeout=0.1)
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
