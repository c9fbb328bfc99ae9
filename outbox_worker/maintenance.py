"""Upkeep beside the hot path: disabling endpoints that keep failing, sealing secrets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from psycopg_pool import AsyncConnectionPool

from outbox_worker import db
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings


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
