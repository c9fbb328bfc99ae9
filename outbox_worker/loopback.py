"""A loopback HTTP server for receivers the product runs itself: the demo's
receiver, ``outbox-worker receive``, and the receivers of the tests and the bench."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve_on_loopback(
    app: web.Application, host: str = "127.0.0.1", port: int = 0, **runner_options: Any
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (by default a free port of 127.0.0.1);
    returns its runner (to clean up) and base URL. The demo's receiver, the
    test receiver, the bench scripts and ``outbox-worker receive`` all
    listen this way."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{host}:{bound}"
