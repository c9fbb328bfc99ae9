"""Where the worker may send: the send-time half of the SSRF guard.

The policy is the database's (``outbox.config.allow_http`` and
``allow_private_networks``, which registration checks too); the worker's
``OUTBOX_ALLOW_HTTP`` and ``OUTBOX_ALLOW_PRIVATE_NETWORKS`` can only tighten
it. :class:`UrlPolicy` holds the two sides; the worker reads the database's
at start and every few seconds after (``maintenance.PolicyWatcher``).

Registration (SQL) refuses bad schemes and IP literals, but it cannot
resolve names. At send time the HTTP client (:mod:`outbox_worker.client`)
resolves each name, drops every address :meth:`UrlPolicy.refuse` refuses (by
:mod:`outbox_worker.ranges`) and connects only to an address it kept, so a
DNS answer that changes between the check and the connect (rebinding) cannot
slip through. Link-local and cloud metadata addresses are refused whatever
the policy says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from yarl import URL

from outbox_worker.ranges import range_of

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# A delivery the policy refuses, where a setting would allow it, waits this
# long with its attempts unchanged (no request was made): long enough not to
# spin; a change of the database's policy releases it at once.
HOLD_SECONDS = 30.0


class BlockedTarget(OSError):
    """The target is one webhooks may not reach. ``held``: a setting that
    allows it exists, so the delivery waits for it instead of failing."""

    def __init__(self, message: str, *, held: bool = False) -> None:
        super().__init__(message)
        self.held = held


def refusal(address: Address, *, allow_private: bool = False) -> str | None:
    """Why ``address`` is refused (its range's kind: ``never``, ``local`` or
    ``reserved``), or None when a webhook may reach it."""
    entry = range_of(address)
    if entry is None:
        return None
    if entry.kind == "embedded":
        return refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), allow_private=allow_private)
    if entry.kind == "global" or (entry.kind == "local" and allow_private):
        return None
    return entry.kind


def is_blocked(address: Address, *, allow_private: bool = False) -> bool:
    return refusal(address, allow_private=allow_private) is not None


def _describe(address: Address) -> str:
    entry = range_of(address)
    if entry is not None and entry.kind == "embedded":
        return f"{address} ({entry.name} {ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)})"
    return f"{address} ({entry.name})" if entry else str(address)


class UrlPolicy:
    """The URL policy in force: the database's, tightened by this worker's
    settings. Until the database's is read, it allows neither plain http nor
    private networks (the strictest)."""

    def __init__(self, *, worker_http: bool = True, worker_private: bool = True) -> None:
        self.worker_http = worker_http
        self.worker_private = worker_private
        self.database_http = False
        self.database_private = False
        self.known = False  # the database's side has been read
        self._on_change: list[Callable[[], None]] = []

    @classmethod
    def for_worker(cls, settings: Any) -> UrlPolicy:
        return cls(worker_http=settings.allow_http, worker_private=settings.allow_private_networks)

    @property
    def allow_http(self) -> bool:
        return self.database_http and self.worker_http

    @property
    def allow_private(self) -> bool:
        return self.database_private and self.worker_private

    def on_change(self, callback: Callable[[], None]) -> None:
        self._on_change.append(callback)

    def set_database(self, *, allow_http: bool, allow_private: bool) -> bool:
        """Take the database's policy; True when what is allowed changed."""
        before = (self.allow_http, self.allow_private)
        self.database_http, self.database_private, self.known = allow_http, allow_private, True
        changed = before != (self.allow_http, self.allow_private)
        if changed:
            for callback in self._on_change:
                callback()
        return changed

    def _switch(self, column: str, database: bool) -> str:
        # The one setting that refuses: the database's, or else this worker's.
        if not database:
            return f"refused by outbox.config.{column} = false (outbox-worker config set {column}=true)"
        return f"refused by OUTBOX_{column.upper()}=false on this worker"

    def http_refusal(self) -> str:
        return self._switch("allow_http", self.database_http)

    def private_refusal(self) -> str:
        return self._switch("allow_private_networks", self.database_private)

    def refuse(self, address: Address) -> BlockedTarget | None:
        """The refusal of ``address`` under this policy, or None."""
        why = refusal(address, allow_private=self.allow_private)
        if why is None:
            return None
        if why == "local":
            return BlockedTarget(
                f"{_describe(address)} is a loopback or private address: {self.private_refusal()}",
                held=True,
            )
        if why == "never":
            return BlockedTarget(f"{_describe(address)} is link-local or cloud metadata: never allowed")
        return BlockedTarget(f"{_describe(address)} is a reserved address: never allowed")


def check_url(url: URL, policy: UrlPolicy) -> None:
    """Raise BlockedTarget for a URL the worker must not request."""
    if url.scheme not in ("https", "http"):
        raise BlockedTarget(f"scheme {url.scheme!r} is not allowed")
    if url.scheme == "http" and not policy.allow_http:
        raise BlockedTarget(f"plain http {policy.http_refusal()}", held=True)
    if url.user is not None or url.password is not None:
        raise BlockedTarget("credentials in the URL are not allowed")
    if not url.host:
        raise BlockedTarget("URL has no host")
    try:
        literal = ipaddress.ip_address(url.host.strip("[]"))
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if refused := policy.refuse(literal):
        raise refused
