"""Console sign-in: the session cookie, the viewer it stands for, and the CSRF token of its forms.

The cookie holds a random token; the database keeps only its SHA-256, next
to the id of the API key that signed in (``outbox.console_sessions``). Every
request looks the session up through ``outbox.console_session``, which
answers nothing once the key is revoked, so revoking the key ends the
session at the next click. The CSRF token of a session is an HMAC of its
token: a form from another session (or a replayed one after sign-out)
carries a token that does not match.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from outbox_worker import api_keys, db

COOKIE = "outbox_console"
# A session ends after this even while its key lives.
LIFETIME_SECONDS = 12 * 3600


class NotSignedIn(Exception):
    """No live session: the console answers with the sign-in page."""


class Forbidden(Exception):
    """A state-changing request without this session's CSRF token, or from another origin."""


class OwnerNotFound(Exception):
    """A page asked for an owner this viewer may not see: answered as 404, like a missing one."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: the key's owner, whether it is an operator's, and the
    owner whose webhooks the page shows (``acting``; for an operator None
    until one is chosen)."""

    owner_id: str
    operator: bool
    csrf: str
    acting: str | None

    def for_owner(self, requested: str | None) -> Viewer:
        """This viewer acting for ``requested`` (the ``owner`` of a URL or form).

        A vendor acts for its own owner only: naming another is a 404. An
        operator acts for whichever owner it names."""
        if not requested:
            return self
        if not self.operator and requested != self.owner_id:
            raise OwnerNotFound(requested)
        return Viewer(self.owner_id, self.operator, self.csrf, requested)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def csrf_token(token: str) -> str:
    return hmac.new(token.encode("ascii", "replace"), b"outbox-console-csrf", hashlib.sha256).hexdigest()


def check_csrf(viewer: Viewer, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(viewer.csrf.encode(), sent.encode("utf-8", "replace")):
        raise Forbidden("this form has expired or belongs to another session: reload the page and try again")


async def sign_in(conn: db.AsyncConnection, key: str) -> str | None:
    """A new session's token for a live ``key``; None for an unknown or revoked one."""
    key = key.strip()
    if not key or len(key) > 256 or not key.isascii():
        return None
    token = secrets.token_urlsafe(32)
    params = {
        "key_hash": api_keys.key_hash(key),
        "token_hash": _token_hash(token),
        "lifetime": LIFETIME_SECONDS,
    }
    rows = await db.fetch_async(conn, "start_console_session", params)
    return token if rows else None


async def viewer(conn: db.AsyncConnection, token: str | None) -> Viewer:
    """The viewer of a session token; :class:`NotSignedIn` when it is not live."""
    if not token or len(token) > 100 or not token.isascii():
        raise NotSignedIn
    rows = await db.fetch_async(conn, "console_session", {"token_hash": _token_hash(token)})
    if not rows:
        raise NotSignedIn
    row = rows[0]
    owner = row["owner_id"]
    return Viewer(owner, row["operator"], csrf_token(token), None if row["operator"] else owner)


async def sign_out(conn: db.AsyncConnection, token: str) -> None:
    await db.fetch_async(conn, "end_console_session", {"token_hash": _token_hash(token)})
