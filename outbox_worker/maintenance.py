"""Upkeep beside the hot path: disabling endpoints that keep failing, sealing
secrets stored in plaintext, erasing previous secrets whose overlap ended,
making parked keyed deliveries due, and keeping the URL policy in step with
the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from outbox_worker import db
from outbox_worker.netpolicy import HOLD_SECONDS, UrlPolicy
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings
from outbox_worker.sql import query


class FailingWebhookDisabler:
    """Disables a webhook that has failed without one success for
    ``disable_after`` seconds (Svix: 5 days), fails its queued deliveries and
    emits ``webhook.disabled`` into the outbox so the app can tell its owner."""

    def __init__(self, pool: AsyncConnectionPool[Any], settings: Settings, log: Any) -> None:
        self._pool = pool
        self._settings = settings
        self._log = log.bind(component="maintenance")
        self.interval = min(60.0, max(1.0, settings.disable_after / 10))

    async def run_once(self) -> list[Any]:
        async with self._pool.connection() as conn, conn.transaction():
            rows = await db.fetch_async(
                conn, "failing_webhooks", {"disable_after": self._settings.disable_after}
            )
            if not rows:
                return []
            reason = f"no successful delivery for {self._settings.disable_after:g} s"
            disabled = await db.fetch_async(
                conn, "disable_webhooks", {"ids": [r["id"] for r in rows], "reason": reason}
            )
        for row in disabled:
            self._log.warning("webhook disabled", webhook_id=str(row["id"]), reason=reason)
        return [r["id"] for r in disabled]

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                self._log.warning("maintenance failed", error=str(exc).strip())
            await asyncio.sleep(self.interval)


def _sealed_headers(headers: dict[str, str] | None, box: SecretBox) -> str | None:
    return None if headers is None else json.dumps({k: box.reseal(v) for k, v in headers.items()})


def sealed_params(rows: list[db.Row], box: SecretBox) -> dict[str, Any]:
    """Parameters of ``store_sealed_secrets``: ``rows``' secrets and header values under the newest key."""
    return {
        "ids": [r["id"] for r in rows],
        "old": [r["secret"] for r in rows],
        "sealed": [box.reseal(r["secret"]) for r in rows],
        "old_previous": [r["previous_secret"] for r in rows],
        "sealed_previous": [box.reseal(r["previous_secret"]) if r["previous_secret"] else None for r in rows],
        "old_headers": [None if r["headers"] is None else json.dumps(r["headers"]) for r in rows],
        "sealed_headers": [_sealed_headers(r["headers"], box) for r in rows],
    }


class SecretSealer:
    """Seals secrets and header values that were stored in plaintext (created from plain SQL)."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], box: SecretBox, log: Any, interval: float = 2.0
    ) -> None:
        self._pool = pool
        self._box = box
        self._log = log.bind(component="secret-sealer")
        self.interval = interval

    async def run_once(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            rows = await db.fetch_async(conn, "unsealed_secrets", {"limit": 500})
            if rows:
                await db.fetch_async(conn, "store_sealed_secrets", sealed_params(rows, self._box))
            return len(rows)

    async def run(self) -> None:
        while True:
            try:
                if sealed := await self.run_once():
                    self._log.info("sealed plaintext secrets", count=sealed)
            except Exception as exc:
                self._log.warning("sealing secrets failed", error=str(exc).strip())
            await asyncio.sleep(self.interval)


class PreviousSecretEraser:
    """Erases each previous secret once its rotation overlap has ended. It
    has stopped signing by then (claims read only unexpired ones), but kept
    in the table it would still sit in every later backup."""

    def __init__(self, pool: AsyncConnectionPool[Any], log: Any, interval: float = 60.0) -> None:
        self._pool = pool
        self._log = log.bind(component="secret-eraser")
        self.interval = interval

    async def run_once(self) -> int:
        async with self._pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(query("erase_expired_previous_secrets"))
            erased: int = cur.rowcount
            return erased

    async def run(self) -> None:
        while True:
            try:
                if erased := await self.run_once():
                    self._log.info("erased previous secrets whose overlap ended", count=erased)
            except Exception as exc:
                self._log.warning("erasing previous secrets failed", error=str(exc).strip())
            await asyncio.sleep(self.interval)


class HeadUnparker:
    """Makes due the parked keyed deliveries that head their key.

    A keyed delivery behind an earlier one of its key is parked at fan-out
    and made due when that one finishes (``complete_deliveries``). A fan-out
    that parks one behind a delivery finishing at the same moment misses that
    hand-off (each statement sees the other's work only once committed); this
    sweep, once a second, is what makes sure such a key moves on.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        log: Any,
        on_unparked: Callable[[], None],
        interval: float = 1.0,
    ) -> None:
        self._pool = pool
        self._log = log.bind(component="ordering")
        self._on_unparked = on_unparked
        self.interval = interval

    async def run_once(self) -> int:
        async with self._pool.connection() as conn:
            rows = await db.fetch_async(conn, "unpark_heads", {})
        if rows:
            self._on_unparked()
        return len(rows)

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                self._log.warning("unparking keyed deliveries failed", error=str(exc).strip())
            await asyncio.sleep(self.interval)


class PolicyWatcher:
    """Reads the database's URL policy (``outbox.config``) into the worker's
    :class:`~outbox_worker.netpolicy.UrlPolicy`, at start and every
    ``interval`` seconds: one switch in the database opens local receivers
    for every worker, and a change reaches them within that interval."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], policy: UrlPolicy, log: Any, interval: float = 5.0
    ) -> None:
        self._pool = pool
        self._policy = policy
        self._log = log.bind(component="policy")
        self.interval = interval

    async def run_once(self, wait: float = 30.0) -> None:
        policy = self._policy
        async with self._pool.connection(timeout=wait) as conn:
            [row] = await db.fetch_async(conn, "url_policy", {})
            known = policy.known
            changed = policy.set_database(
                allow_http=row["allow_http"], allow_private=row["allow_private_networks"]
            )
            if changed and known:
                # Held deliveries are judged again now, not when their hold ends.
                await db.fetch_async(conn, "release_held", {"hold_seconds": HOLD_SECONDS})
        if changed or not known:
            self._log.info(
                "URL policy",
                allow_http=policy.allow_http,
                allow_private_networks=policy.allow_private,
                config=dict(row),  # "database" names the database in a fleet
            )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except Exception as exc:  # the last policy read stays in force
                self._log.warning("reading the URL policy failed", error=str(exc).strip())
