"""Webhook secrets sealed at rest, with a key the database never holds.

With ``OUTBOX_SECRET_KEYS`` set (Fernet keys, newest first), the Python
wrappers generate each secret, seal it, and hand the database only
``enc:v1:<token>``, so neither the tables nor the WAL nor backups carry a
usable secret. The worker opens them to sign. Secrets created from plain SQL
are stored as generated and sealed by the worker within seconds; after a
key rotation, ``outbox-worker secrets reseal`` moves everything to the new
key. Without keys, secrets are stored as generated (still hidden from the
DBA role).
"""

from __future__ import annotations

import base64
import secrets as random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from outbox_worker.errors import SecretUnavailable

# cryptography is imported by the first box (or key) made: a worker without
# OUTBOX_SECRET_KEYS never loads it, ~7 MB of resident library pages.
if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

PREFIX = "enc:v1:"


def new_secret() -> str:
    """A webhook secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(random.token_bytes(32)).decode()


def generate_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("SecretBox needs at least one key")
        from cryptography.fernet import Fernet, MultiFernet

        self._fernet: MultiFernet = MultiFernet([Fernet(k.encode()) for k in keys])
        self._opened: dict[str, str] = {}  # the hot path opens the same few secrets again and again

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> SecretBox | None:
        return cls(keys) if keys else None

    def seal(self, secret: str) -> str:
        return PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def reseal(self, stored: str) -> str:
        """``stored`` under the newest key (sealing plaintext too)."""
        if not stored.startswith(PREFIX):
            return self.seal(stored)
        return PREFIX + self._fernet.rotate(stored[len(PREFIX) :].encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        if (cached := self._opened.get(stored)) is not None:
            return cached
        from cryptography.fernet import InvalidToken

        try:
            plain = self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretUnavailable(
                "a webhook secret is sealed with a key not in OUTBOX_SECRET_KEYS"
            ) from None
        if len(self._opened) > 10_000:
            self._opened.clear()
        self._opened[stored] = plain
        return plain


def open_secret(stored: str, box: SecretBox | None) -> str:
    if box is not None:
        return box.open(stored)
    if stored.startswith(PREFIX):
        raise SecretUnavailable("a webhook secret is sealed but OUTBOX_SECRET_KEYS is not set")
    return stored
