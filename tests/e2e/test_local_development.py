"""The README's local development, as a newcomer runs it: one switch in the
database, ``outbox-worker receive`` as the receiver, the worker on its defaults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import aiohttp

from outbox_worker.signing import sign_headers
from tests.cli import run
from tests.e2e.test_ops import free_port
from tests.helpers import wait_for


class Process:
    """A console-script process whose stdout is collected line by line."""

    def __init__(self, database_url: str, *args: str, **env: str) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "outbox_worker.cli", *args],
            env={**os.environ, "OUTBOX_DATABASE_URL": database_url, "OUTBOX_LOG_FORMAT": "json", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def test_one_switch_then_receive_shows_each_signed_delivery(make_database: Any) -> None:
    url = make_database("outbox_local_dev")
    assert run(url, "migrate").returncode == 0
    switched = run(url, "config", "set", "allow_http=true", "allow_private_networks=true")
    assert switched.returncode == 0, switched.stderr
    port = free_port()
    created = run(
        url, "--json", "webhooks", "create", "--owner", "vendor-1",
        "--url", f"http://127.0.0.1:{port}/hook", "--event", "order.*",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)[0]["secret"]
    receiver = Process(url, "receive", "--port", str(port), "--secret", secret)
    # The worker on its defaults: no OUTBOX_ALLOW_* needed beside the database's switch.
    worker = Process(url, "run", OUTBOX_METRICS_PORT="0", OUTBOX_POLL_INTERVAL="0.1")
    try:
        emitted = run(
            url, "emit", "--owner", "vendor-1", "--type", "order.created", "--data", '{"id": "clx1"}'
        )
        assert emitted.returncode == 0, emitted.stderr
        wait_for(lambda: any("webhook-signature: verified" in line for line in receiver.lines), timeout=30)
        shown = "\n".join(receiver.lines)
        assert "POST /hook -> 200  order.created at " in shown
        assert "signature X-Brutlers-Signature: verified" in shown
        assert '"data":{"id":"clx1"}' in shown and "webhook-id: evt_1" in shown.lower()  # names: any case
    finally:
        assert worker.stop() == 0
    try:
        # A request signed with another secret: shown as such, and refused.
        body = b'{"event":"order.created","data":{},"timestamp":"2026-12-01T00:00:00.000Z"}'
        headers = sign_headers(
            event_id=9, body=body, secrets=["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"], timestamp=0,
            signature_header="X-Brutlers-Signature",
        )  # fmt: skip

        async def post() -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"http://127.0.0.1:{port}/other", data=body, headers=headers) as resp,
            ):
                return resp.status

        import asyncio

        assert asyncio.run(post()) == 401
        wait_for(lambda: any("POST /other -> 401" in line for line in receiver.lines), timeout=10)
        assert any("does not verify with the given secrets" in line for line in receiver.lines)
    finally:
        assert receiver.stop() == 0
