"""``outbox-worker receive``: a receiver for development that shows what arrives.

It answers every POST on any path, prints the event, the headers and
whether each signature verifies with the given secrets (the configured
signature header, its ``-Previous`` twin during a rotation, and the
Standard Webhooks ``webhook-signature`` with its timestamp), and answers 200
when every signature sent verifies (401 otherwise), or the status asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from outbox_worker.loopback import serve_on_loopback
from outbox_worker.signing import body_signature, standard_signature

# Standard Webhooks receivers refuse timestamps further off than this.
TOLERANCE_SECONDS = 300


@dataclass
class Received:
    """One request as the receiver judged it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    checks: dict[str, str] = field(default_factory=dict)  # header -> verdict
    status: int = 200

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(v == "verified" for v in self.checks.values())

    def as_json(self) -> dict[str, Any]:
        try:
            event: Any = json.loads(self.body)
        except ValueError:
            event = self.body.decode("utf-8", "replace")
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "signatures": self.checks,
            "headers": self.headers,
            "event": event,
        }

    def as_text(self) -> str:
        try:
            event = json.loads(self.body)
            summary = f"{event.get('event')} at {event.get('timestamp')}" if isinstance(event, dict) else ""
        except ValueError:
            summary = "(body is not JSON)"
        lines = [f"{self.method} {self.path} -> {self.status}  {summary}"]
        lines += [f"  {name}: {value}" for name, value in self.headers.items()]
        lines += [f"  signature {name}: {verdict}" for name, verdict in self.checks.items()]
        lines.append(f"  body: {self.body.decode('utf-8', 'replace')}")
        return "\n".join(lines)


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def check_signatures(
    headers: dict[str, str], body: bytes, secrets: Sequence[str], signature_header: str, now: float
) -> dict[str, str]:
    """For each signature header present: ``verified``, or why not."""
    if not secrets:
        return {}
    lower = {k.lower(): v for k, v in headers.items()}
    checks: dict[str, str] = {}
    for name in (signature_header, f"{signature_header}-Previous"):
        sent = lower.get(name.lower())
        if sent is not None:
            ok = any(_equal(body_signature(body, s), sent) for s in secrets)
            checks[name] = "verified" if ok else "does not verify with the given secrets"
    sent = lower.get("webhook-signature")
    if sent is not None:
        msg_id, stamp = lower.get("webhook-id", ""), lower.get("webhook-timestamp", "")
        if not stamp.isdigit():
            checks["webhook-signature"] = "no valid webhook-timestamp"
        else:
            try:
                expected = {standard_signature(msg_id, int(stamp), body, s) for s in secrets}
            except ValueError:
                expected = set()  # a secret that is not whsec_<base64> signs no Standard Webhook
            offered = sent.split()
            if not any(_equal(e, o) for e in expected for o in offered):
                checks["webhook-signature"] = "does not verify with the given secrets"
            elif abs(age := now - int(stamp)) > TOLERANCE_SECONDS:
                when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s ahead"
                checks["webhook-signature"] = f"verified, but its timestamp is {when} (libraries refuse it)"
            else:
                checks["webhook-signature"] = "verified"
    if not checks:
        checks[signature_header] = "missing"
    return checks


def make_app(
    secrets: Sequence[str], signature_header: str, status: int | None, show: Callable[[Received], None]
) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        got = Received(request.method, request.path_qs, dict(request.headers), body)
        got.checks = check_signatures(got.headers, body, secrets, signature_header, time.time())
        if status is not None:
            got.status = status
        elif secrets and not got.verified:
            got.status = 401
        show(got)
        return web.Response(status=got.status, text="OK" if got.status < 300 else "refused")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


async def serve(host: str, port: int, app: web.Application, ready: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner, url = await serve_on_loopback(app, host, port)
    try:
        ready(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
