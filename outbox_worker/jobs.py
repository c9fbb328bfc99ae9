"""The sending core's shared vocabulary: a leased delivery (:class:`Job`),
one attempt's result (:class:`Outcome`), the limits derived from settings,
and the dispatcher-to-sender handshake (:class:`Handoff`).

The dispatcher, the sender, the attempt, the completer and the metrics all
speak these terms; none of them imports another only to borrow its types.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from outbox_worker import db
from outbox_worker.errors import SecretUnavailable
from outbox_worker.secretbox import SecretBox, open_secret
from outbox_worker.settings import Settings
from outbox_worker.signing import UnreadablePayload
from outbox_worker.traceparent import TraceParent

Status = Literal["delivered", "pending", "failed"]
Headers = tuple[tuple[str, str], ...]

# A webhook's headers column as the claim and dispatch return it (JSON
# text), parsed: once per distinct value, not once per job. The text
# changes whenever the headers do, so an update is never served stale.
_parsed_headers: dict[str, Headers] = {}


def stored_headers(raw: str | None) -> Headers:
    """``(name, stored value)`` pairs of a webhook's headers column; values may be sealed."""
    if raw is None:
        return ()
    parsed = _parsed_headers.get(raw)
    if parsed is None:
        if len(_parsed_headers) >= 4096:
            _parsed_headers.clear()
        parsed = _parsed_headers[raw] = tuple(json.loads(raw).items())
    return parsed


@dataclass(slots=True)
class Job:
    """A delivery leased to this process, with everything one attempt needs."""

    id: int
    event_id: int
    webhook_id: uuid.UUID
    attempt: int
    url: str
    # Out of repr: a job must never print its secrets (or its payload) in a log.
    secrets: tuple[str, ...] = field(repr=False)
    body: bytes = field(repr=False)
    enabled: bool = True
    headers: Headers = ()  # the webhook's own, opened (receiver authentication)
    secret_error: str | None = None
    # Why the event's stored payload could not be encoded (then ``body`` is
    # empty and the delivery fails at once, alone; see UnreadablePayload).
    payload_error: str | None = None
    # The database does not hold ``body`` yet: the completer stores it with
    # this job's outcome (set on one job per event).
    store_body: bool = False
    # It heads an ordering key: once it is finished, the next of its key is due.
    ordered: bool = False
    # Not before this (monotonic clock): its webhook's rate limit spaced it.
    send_at: float = 0.0
    # When the lease ends at the latest, on this process's monotonic clock
    # (measured from before the leasing statement was sent, so never late).
    lease_ends: float = math.inf
    owner_id: str = ""  # the webhook's owner: its requests share the owner's cap
    origin: str = ""  # the receiver's scheme://host:port, set on hand-over
    # When the sweep cancels this attempt (monotonic clock), set as it starts;
    # timed_out tells that cancellation from shutdown's.
    deadline: float = math.inf
    timed_out: bool = False
    # The trace its attempts join; set only by a worker that traces (tracing.py).
    trace: TraceParent | None = None

    @classmethod
    def from_row(
        cls,
        row: db.Row,
        box: SecretBox | None,
        body: bytes | UnreadablePayload | None = None,
        store_body: bool = False,
        lease_ends: float = math.inf,
    ) -> Job:
        payload_error = None
        if isinstance(body, UnreadablePayload):
            payload_error, body, store_body = body.reason, b"", False
        stored = (row["secret"], row["previous_secret"]) if row["previous_secret"] else (row["secret"],)
        try:
            secrets = tuple(open_secret(s, box) for s in stored)
            # Opened like the secrets (the box caches each sealed value).
            headers = tuple((name, open_secret(v, box)) for name, v in stored_headers(row.get("headers")))
            secret_error = None
        except SecretUnavailable as exc:
            secrets, headers, secret_error = (), (), str(exc)
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            webhook_id=row["webhook_id"],
            attempt=row["attempts"] + 1,
            url=row["url"],
            secrets=secrets,
            body=body if body is not None else bytes(row["body"]),
            enabled=row.get("enabled", True),
            ordered=row.get("ordered", False),
            send_at=time.monotonic() + delay if (delay := row.get("delay")) else 0.0,
            headers=headers,
            secret_error=secret_error,
            payload_error=payload_error,
            store_body=store_body,
            lease_ends=lease_ends,
            owner_id=row["owner_id"],
        )


@dataclass(slots=True)
class Outcome:
    """One attempt's result, as the completer records it."""

    job: Job
    status: Status
    retry_in: float
    attempted_at: datetime
    duration_ms: float
    status_code: int | None = None
    error_class: str | None = None
    error: str | None = None
    response_body: str | None = None
    disable_reason: str | None = None
    trace_id: str | None = None  # the attempt's trace (hex), when the worker traces: its log line says it


class Handoff(Protocol):
    """What the dispatcher needs of the sender: send slots reserved before a
    fan-out leases deliveries to this process, the leased jobs handed over
    once the statement has committed, and the webhooks it must not lease to
    this process (they hold their share of its slots already)."""

    def reserve(self, wanted: int) -> int:
        """Reserve up to ``wanted`` send slots; returns how many were granted."""
        ...

    def hand_over(self, jobs: list[Job], reserved: int) -> None:
        """Start the leased ``jobs`` and return the rest of a reservation."""
        ...

    def busy_webhooks(self) -> list[uuid.UUID]:
        """Webhooks a fan-out or claim must not lease to this process."""
        ...

    def busy_owners(self) -> list[str]:
        """Owners a fan-out or claim must not lease to this process."""
        ...

    def note_backlog(self) -> None:
        """Due rows exist that nobody leased: the sender should claim them."""
        ...


def ahead_per_webhook(settings: Settings) -> int:
    """Leased deliveries a webhook may hold beyond its per-host limit and
    still be claimed for: a quarter of that limit. With none, a webhook at
    its limit was claimed for only once its queue had run dry and one of its
    requests had ended, and the slots it freed meanwhile stood empty until
    that claim came back (docs/performance.md)."""
    return settings.per_host_concurrency // 4


def lease_limit_per_webhook(settings: Settings) -> int:
    """Most deliveries one claim or fan-out leases to a single webhook: twice
    its per-host limit (the bound in the sender's docstring rests on it)."""
    return 2 * settings.per_host_concurrency


def owner_limit(settings: Settings) -> int:
    """Requests one owner may have running in this process: its share of
    ``concurrency``. Five webhooks of one owner on slow hosts held every
    slot for a whole request timeout while every other owner waited."""
    return max(1, int(settings.concurrency * settings.owner_share))


def owner_lease_limit(settings: Settings) -> int:
    """Most of one owner's deliveries a claim or fan-out leases: twice its
    share, as a webhook gets twice its cap. At once its share, one owner's
    backlog took three times the claims of the same rows with no share."""
    return 2 * owner_limit(settings)


def pace_horizon(settings: Settings) -> float:
    """How far ahead a claim books send slots of a rate-limited webhook: two
    seconds, or less when a lease leaves less room beyond a request."""
    return max(0.1, min(2.0, (settings.lease_seconds - settings.request_timeout) / 2))


def refill_size(settings: Settings) -> int:
    """Slots that must be free before the sender claims again, and how many
    it leases ahead of its slots: a quarter of them, at most a batch. Waking
    on every freed slot would claim one row per round trip."""
    return max(1, min(settings.batch_size, settings.concurrency // 4))


def timeout_tick(settings: Settings) -> float:
    """How often the sender sweeps for requests past their timeout: a quarter
    of the timeout, at most 0.25 s, and a fifth of the margin a lease leaves
    beyond a request, so that a request ends before its lease. At least
    10 ms, or a lease a hair longer than the timeout (which settings allow)
    would spin the sweep; aiohttp's own timeout overran by up to 1 s (it
    rounds deadlines past 5 s up to whole seconds)."""
    timeout, lease = settings.request_timeout, settings.lease_seconds
    return max(0.01, min(0.25, timeout / 4, (lease - timeout) / 5))


def bodies_params(bodies: Mapping[int, bytes]) -> dict[str, list[int] | list[bytes]]:
    """Event ids and body bytes, the parameters ``store_bodies`` and
    ``complete_deliveries`` share: two arrays, the bytes sent as ``bytea[]`` in
    binary. The JSON array of base64 text they replace cost ~7 us per 4 KB
    body here and its parse ~24 us in PostgreSQL (31 -> 4 us per row for
    200 bodies of 4.3 KB; 2.0 -> 1.3 us for 120-byte ones)."""
    return {"body_event_ids": list(bodies), "bodies": list(bodies.values())}


def readable_bodies(bodies: Mapping[int, bytes | UnreadablePayload]) -> dict[int, bytes]:
    """The bodies to store: an unreadable payload has none (its body stays NULL)."""
    return {i: b for i, b in bodies.items() if isinstance(b, bytes)}
