"""Running workers in tests: in-process (a task) or as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from outbox_worker.fleet import Fleet
from outbox_worker.netpolicy import UrlPolicy
from outbox_worker.settings import Settings
from outbox_worker.worker import Worker
from tests.helpers import eventually

FAST = {
    "allow_http": True,
    "allow_private_networks": True,
    "poll_interval": 0.05,
    "retry_schedule": [0.2, 0.4, 0.6],
    "retry_jitter": 0.0,
    "request_timeout": 2.0,
    "connect_timeout": 1.0,
    "lease_seconds": 30.0,
    "shutdown_grace": 2.0,
    "log_format": "json",
    "metrics_port": 0,
}


def settings(database_url: str, **overrides: Any) -> Settings:
    return Settings.model_validate({**FAST, "database_url": database_url, **overrides})


def open_policy(config: Settings) -> UrlPolicy:
    """The URL policy of a worker whose database allows loopback over http
    (as tests/conftest.py's TEST_CONFIG does), for attempts run without one."""
    policy = UrlPolicy.for_worker(config)
    policy.set_database(allow_http=True, allow_private=True)
    return policy


@asynccontextmanager
async def running_worker(database_url: str, **overrides: Any) -> AsyncIterator[Worker]:
    worker = Worker(settings(database_url, **overrides))
    task = asyncio.create_task(worker.run())
    try:
        while not worker.ready:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield worker
    finally:
        worker.stop()
        assert await asyncio.wait_for(task, 30) == 0


@asynccontextmanager
async def running_fleet(database_urls: list[Any], **overrides: Any) -> AsyncIterator[Fleet]:
    """One worker over several databases (``OUTBOX_DATABASE_URLS``), in this loop."""
    fleet = Fleet(Settings.model_validate({**FAST, "database_urls": database_urls, **overrides}))
    task = asyncio.create_task(fleet.run())
    try:
        while not fleet.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield fleet
    finally:
        fleet.stop()
        assert await asyncio.wait_for(task, 30) == 0


def spawn_worker(
    database_url: str | list[Any], worker_id: str, env_extra: dict[str, str] | None = None, **overrides: Any
) -> subprocess.Popen[bytes]:
    """``outbox-worker run`` as a real process, configured through the
    environment: ``overrides`` as OUTBOX_* settings, ``env_extra`` as is
    (OTEL_* variables, say); a list of databases goes to ``OUTBOX_DATABASE_URLS``."""
    env = {**os.environ, **(env_extra or {}), "OUTBOX_WORKER_ID": worker_id}
    if isinstance(database_url, list):
        env.pop("OUTBOX_DATABASE_URL", None)
        env["OUTBOX_DATABASE_URLS"] = json.dumps(database_url)
    else:
        env["OUTBOX_DATABASE_URL"] = database_url
    for key, value in {**FAST, **overrides}.items():
        env[f"OUTBOX_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return subprocess.Popen(
        [sys.executable, "-m", "outbox_worker.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(sig)


def delivery_states(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select status::text, count(*) from outbox.deliveries group by 1").fetchall()
    return {status: count for status, count in rows}


def settled(database_url: str, expected: int) -> bool:
    """True once ``expected`` deliveries exist and none is pending."""
    states = delivery_states(database_url)
    return sum(states.values()) == expected and states.get("pending", 0) == 0


async def until_settled(database_url: str, expected: int, timeout: float = 20) -> None:
    """Wait (polling, with a deadline) until :func:`settled`."""

    async def check() -> bool:
        return await asyncio.to_thread(settled, database_url, expected)

    await eventually(check, timeout=timeout, interval=0.05, what=f"{expected} settled deliveries")
