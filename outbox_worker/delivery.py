"""Sender: leased deliveries -> signed HTTP POSTs -> outcomes.

The sender claims due deliveries in batches of at most its free slots
(``concurrency`` plus one refill leased ahead, so that a slot that frees
starts its next request without waiting for a claim), commits the lease,
and only then sends, with no transaction open. Requests
run in lanes, long-lived tasks that each send one request at a time (no
more lanes than requests ever ran at once); each outcome goes to the
completer, which writes outcomes in batches. Leases expire on the database
clock, so a delivery held by a dead worker is claimed again by any replica.

At most ``per_host_concurrency`` (the cap) requests per receiver origin
(scheme, host, port: what aiohttp's per-host limit counts) run at once, so
at most that many per webhook. A claim or a fan-out leases a webhook at
most twice its cap, and nothing while it holds its cap plus a quarter of it
(``ahead``: queued ready, so that the slots its requests free are refilled
while the next claim is on its way), so a slow receiver holds at most 3 x
cap + ahead - 1 slots per webhook (5 x cap + ahead - 1 when a claim and a
fan-out overlap), never all of them. Those beyond the cap wait here, not in
aiohttp's connection pool: a request's timeouts start when it is sent,
never while it queues, however many webhooks share a host, and the
webhooks queued for one host take turns at its slots. One whose
lease would end before a whole request could is not sent at all: behind a
slow receiver, sent that late it could run beside another replica's claim of
the same delivery; its row is due again when the lease ends.

Request timeouts are one sweep, not a timer per request: aiohttp's own
``total`` timeout cost ~5 us per request in its timer objects and 6-14 us of
client CPU per request in all (15% of the raw client's, paired runs on
2026-12-06, docs/performance.md). Every ``tick`` while requests run, the
sender cancels those past their deadline, so a request ends at most one tick
after ``request_timeout``; the tick is short enough that it still ends before
its lease.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from psycopg_pool import AsyncConnectionPool
from yarl import URL

from outbox_worker import db
from outbox_worker.errors import SecretUnavailable
from outbox_worker.netpolicy import BlockedTarget, check_url
from outbox_worker.retry import next_delay, parse_retry_after
from outbox_worker.secretbox import SecretBox, open_secret
from outbox_worker.settings import Settings
from outbox_worker.signing import UnreadablePayload, event_body, sign_headers

Status = Literal["delivered", "pending", "failed"]


@dataclass(slots=True)
class Job:
    """A delivery leased to this process, with everything one attempt needs."""

    id: int
    event_id: int
    webhook_id: uuid.UUID
    attempt: int
    url: str
    secrets: tuple[str, ...]
    body: bytes
    enabled: bool = True
    secret_error: str | None = None
    # Why the event's stored payload could not be encoded (then ``body`` is
    # empty and the delivery fails at once, alone; see UnreadablePayload).
    payload_error: str | None = None
    # The database does not hold ``body`` yet: the completer stores it with
    # this job's outcome (set on one job per event).
    store_body: bool = False
    # When the lease ends at the latest, on this process's monotonic clock
    # (measured from before the leasing statement was sent, so never late).
    lease_ends: float = math.inf
    origin: str = ""  # the receiver's scheme://host:port, set on hand-over
    # When the sweep cancels this attempt (monotonic clock), set as it starts;
    # timed_out tells that cancellation from shutdown's.
    deadline: float = math.inf
    timed_out: bool = False

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
            secret_error = None
        except SecretUnavailable as exc:
            secrets, secret_error = (), str(exc)
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            webhook_id=row["webhook_id"],
            attempt=row["attempts"] + 1,
            url=row["url"],
            secrets=secrets,
            body=body if body is not None else bytes(row["body"]),
            enabled=row.get("enabled", True),
            secret_error=secret_error,
            payload_error=payload_error,
            store_body=store_body,
            lease_ends=lease_ends,
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


def ahead_per_webhook(settings: Settings) -> int:
    """Leased deliveries a webhook may hold beyond its per-host limit and
    still be claimed for: a quarter of that limit. With none, a webhook at
    its limit was claimed for only once its queue had run dry and one of its
    requests had ended, and the slots it freed meanwhile stood empty until
    that claim came back (docs/performance.md)."""
    return settings.per_host_concurrency // 4


def lease_limit_per_webhook(settings: Settings) -> int:
    """Most deliveries one claim or fan-out leases to a single webhook: twice
    its per-host limit (the bound in the module docstring rests on it)."""
    return 2 * settings.per_host_concurrency


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


def _text(raw: bytes | str) -> str:
    # Postgres text cannot hold NUL, nor its JSON a lone surrogate (an
    # exception's text can carry one); receivers can send anything.
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", "replace")
    else:
        text = raw.encode("utf-8", "replace").decode()
    return text.replace("\x00", "\ufffd")


async def _read_capped(response: aiohttp.ClientResponse, limit: int, job: Job) -> bytes:
    """Up to ``limit`` bytes of the response body; a slow or endless body
    costs at most the request timeout, never unbounded memory."""
    chunks: list[bytes] = []
    remaining = limit
    try:
        while remaining > 0:
            chunk = await response.content.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except (TimeoutError, aiohttp.ClientError):
        pass  # the status already decided the outcome; keep what arrived
    except asyncio.CancelledError:
        if not _timed_out(job):
            raise
    return b"".join(chunks)


def _timed_out(job: Job) -> bool:
    """Whether a cancellation caught in ``job``'s attempt was the timeout
    sweep's (then it is taken back: the lane goes on), not shutdown's."""
    if not job.timed_out:
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


def _decrement(counts: Counter[Any], key: Any) -> None:
    """One less under ``key``, dropping it at zero: the counters stay as
    small as what is running, and ``busy_webhooks`` walks only those."""
    left = counts[key] - 1
    if left <= 0:
        del counts[key]
    else:
        counts[key] = left


class Sender:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        session: aiohttp.ClientSession,
        settings: Settings,
        record: Callable[[Outcome], None],
        log: Any,
    ) -> None:
        self._pool = pool
        self._session = session
        self._settings = settings
        self.box = SecretBox.from_keys(settings.secret_keys)
        self._record = record
        self._log = log.bind(component="sender")
        # Delivery id -> the lane sending it and its job (the timeout sweep reads both).
        self._tasks: dict[int, tuple[asyncio.Task[None], Job]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._tick = timeout_tick(settings)
        self._idle: list[tuple[asyncio.Task[None], asyncio.Future[Job | None]]] = []
        # Leased deliveries per webhook: running (in _tasks) plus queued.
        self._per_webhook: Counter[uuid.UUID] = Counter()
        # Requests running, and jobs waiting for room, per receiver origin.
        self._running: Counter[str] = Counter()
        # Per origin, per webhook, in turn: webhooks of different customers
        # on one host take turns at its slots (see _next_queued).
        self._queued: dict[str, dict[uuid.UUID, deque[Job]]] = {}
        self._queued_count = 0
        self._urls: dict[str, URL] = {}
        self._origins: dict[str, str] = {}
        self._reserved = 0
        self._skipped: list[uuid.UUID] = []  # saturated webhooks the last claim left out
        self._claim_was_full = False
        self._slot_freed = asyncio.Event()
        # Refill in batches: waking on every freed slot would claim one row
        # per round trip.
        self._refill_at = max(1, min(settings.batch_size, settings.concurrency // 4))
        self._waiting: deque[Job] = deque()  # leased ahead, for any slot that frees
        self._saturated_at = settings.per_host_concurrency + ahead_per_webhook(settings)
        self.wake = asyncio.Event()
        self.claiming = True
        # True while due rows may be waiting that a claim has not taken (a
        # full claim, saturated webhooks skipped, rows the dispatcher could
        # not lease to us). Only then does a finished request trigger a
        # claim; otherwise each delivery would cost an empty claim round trip.
        self.backlog = True

    # -- capacity ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def free_slots(self) -> int:
        # Room for one refill beyond ``concurrency``: those jobs wait in
        # ``_waiting`` and start the moment a request ends, while the next
        # claim is on its way. Without them, each slot that freed stood
        # empty until a refill's worth had freed and that claim came back:
        # 1,000 slots against a 100 ms receiver averaged ~800 requests
        # running (docs/performance.md, "Fixed on the way").
        held = len(self._tasks) + self._queued_count + len(self._waiting) + self._reserved
        return self._settings.concurrency + self._refill_at - held

    def reserve(self, wanted: int) -> int:
        """Reserve up to ``wanted`` send slots (for a claim or a dispatch)."""
        granted = max(0, min(wanted, self.free_slots())) if self.claiming else 0
        self._reserved += granted
        return granted

    def hand_over(self, jobs: list[Job], reserved: int) -> None:
        """Start the leased ``jobs`` and return the rest of a reservation."""
        self._reserved -= reserved
        for job in jobs:
            self._per_webhook[job.webhook_id] += 1
            job.origin = self._origin(job.url)
            if self._must_queue(job.origin):
                self._queue(job)
            elif len(self._tasks) < self._settings.concurrency:
                self._start(job)
            else:
                self._waiting.append(job)
        if reserved > len(jobs):
            self._slot_freed.set()

    def _must_queue(self, origin: str) -> bool:
        """Whether a job for ``origin`` waits in its queue: the origin is at
        its limit, or jobs queued before it go first."""
        return self._running[origin] >= self._settings.per_host_concurrency or origin in self._queued

    def _queue(self, job: Job) -> None:
        """Queue ``job`` behind its origin's running requests, in its webhook's turn."""
        turns = self._queued.setdefault(job.origin, {})
        queue = turns.get(job.webhook_id)
        if queue is None:
            queue = turns[job.webhook_id] = deque()
        queue.append(job)
        self._queued_count += 1

    def note_backlog(self) -> None:
        """Due rows exist that nobody leased (the dispatcher had no room)."""
        self.backlog = True
        self.wake.set()

    def busy_webhooks(self) -> list[uuid.UUID]:
        """Webhooks holding their cap and their share ahead: claims skip them."""
        full = self._saturated_at
        return [w for w, n in self._per_webhook.items() if n >= full]

    def _unsaturated_since_claim(self) -> bool:
        full = self._saturated_at
        return any(self._per_webhook[w] < full for w in self._skipped)

    # -- claiming ---------------------------------------------------------

    async def claim_batch(self) -> int:
        reserved = self.reserve(self._settings.batch_size)
        if not reserved:
            self._claim_was_full = False
            return 0
        jobs: list[Job] = []
        try:
            busy = self._skipped = self.busy_webhooks()
            async with self._pool.connection() as conn:
                lease_ends = time.monotonic() + self._settings.lease_seconds
                rows = await db.fetch_async(
                    conn,
                    "claim_deliveries",
                    {
                        "limit": reserved,
                        "busy_webhooks": busy,
                        "per_webhook": lease_limit_per_webhook(self._settings),
                        "lease_seconds": self._settings.lease_seconds,
                        "worker_id": self._settings.worker_id,
                    },
                )
                # Events whose dispatcher died before storing their bytes.
                bodies = {
                    r["event_id"]: event_body(r["event_type"], r["data"], r["created_at"], self._log)
                    for r in rows
                    if r["body"] is None
                }
                jobs = [
                    Job.from_row(r, self.box, bodies.get(r["event_id"]), lease_ends=lease_ends) for r in rows
                ]
                # A claim short of its room took every due row it could: claiming
                # again at once would only come back empty.
                self._claim_was_full = len(jobs) >= reserved
                self.hand_over(jobs, reserved)
                # Rows may remain for webhooks skipped as saturated, or capped
                # at their limit by this claim (saturated now).
                self.backlog = self._claim_was_full or bool(busy) or bool(self.busy_webhooks())
                reserved = 0
                if bodies:
                    await db.fetch_async(conn, "store_bodies", bodies_params(readable_bodies(bodies)))
            return len(jobs)
        finally:
            if reserved:
                self.hand_over(jobs, reserved)

    async def run(self) -> None:
        """Claim whenever there is work and room: on a wake-up, a freed slot
        after a full claim, or the poll interval."""
        delay = 0.1
        while self.claiming:
            # Cleared before claiming, not after: a wake-up arriving while the
            # claim is in flight (rows the dispatcher could not lease) must
            # lead to another claim, not be lost until the poll interval.
            self.wake.clear()
            try:
                await self.claim_batch()
                delay = 0.1
            except Exception as exc:  # database down: keep sending what we hold, retry
                self._log.warning("claim failed", error=str(exc).strip(), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._claim_was_full and self.free_slots() >= self._refill_at:
                continue  # more may be due right now
            full = self.backlog
            self._slot_freed.clear()
            if full and self.free_slots() >= self._refill_at and self._unsaturated_since_claim():
                continue  # a webhook the claim skipped has room again: that wake-up was just cleared
            waiters = [asyncio.ensure_future(self.wake.wait())]
            if full:
                # The queue may hold more than we had room for (including rows
                # the dispatcher inserted unleased): claim again once enough
                # slots are free, not after the poll interval.
                waiters.append(asyncio.ensure_future(self._slot_freed.wait()))
            _, pending = await asyncio.wait(
                waiters, timeout=self._settings.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    # -- sending ----------------------------------------------------------

    def _start(self, job: Job) -> None:
        while self._idle:
            lane, waiter = self._idle.pop()
            if not waiter.done():  # else cancelled while it waited (shutdown)
                self._bind(job, lane)
                waiter.set_result(job)
                return
        self._bind(job, asyncio.create_task(self._lane(job), name="sender-lane"))

    def _bind(self, job: Job, lane: asyncio.Task[None]) -> None:
        """Count ``job`` as running, sent by ``lane``."""
        self._running[job.origin] += 1
        self._tasks[job.id] = (lane, job)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._tick, self._sweep_timeouts)

    def _sweep_timeouts(self) -> None:
        """Cancel the requests past their deadline; again after a tick while
        any runs. A lane is inside its job's attempt whenever this runs (it
        leaves ``_tasks`` before it awaits anything else), so the
        cancellation lands in that request, never in the lane's next one."""
        now = time.monotonic()
        for lane, job in self._tasks.values():
            if job.deadline <= now and not job.timed_out:
                job.timed_out = True
                lane.cancel()
        self._sweep = (
            asyncio.get_running_loop().call_later(self._tick, self._sweep_timeouts) if self._tasks else None
        )

    async def _lane(self, job: Job | None) -> None:
        """Send jobs one after another: the origin's next queued job at once,
        else wait for :meth:`_start` to hand one over. Lanes live as long as
        the sender and there are at most as many as requests ever ran at
        once; a task per delivery cost its creation, first scheduling and
        teardown (on CPython 3.11 its registration in a Python-level WeakSet
        too): ~7 us against ~1 us for a hand-over, here (docs/performance.md,
        "Fixed on the way")."""
        lane = asyncio.current_task()
        assert lane is not None
        loop = asyncio.get_running_loop()
        while job is not None:
            try:
                await self._run(job)
            except asyncio.CancelledError:
                if not self.claiming:
                    raise  # shutdown: drain() hands the lease back
                # Only shutdown cancels a request; this one came from a
                # timeout that fired as its request ended (what ended the
                # same design on 2026-12-01, docs/performance.md). The delivery's outcome
                # is not recorded: its lease expires and it is sent again.
                lane.uncancel()
                self._log.warning("request cancelled outside shutdown: sent again when its lease expires",
                                  delivery_id=job.id)  # fmt: skip
            except Exception:  # a bug in the bookkeeping must not stop the lane
                self._log.exception("sender bookkeeping failed", delivery_id=job.id)
            job = self._next_queued(job.origin) or self._next_waiting()
            if job is not None:
                self._bind(job, lane)
                continue
            if not self.claiming:
                return
            waiter: asyncio.Future[Job | None] = loop.create_future()
            self._idle.append((lane, waiter))
            job = await waiter

    def _origin(self, raw: str) -> str:
        """The key aiohttp's per-host limit counts a URL under (its
        connection key, less TLS and proxy settings, which are the same for
        every request here): scheme, host and port."""
        origin = self._origins.get(raw)
        if origin is None:
            try:
                url = URL(raw)
                origin = f"{url.scheme}://{url.host}:{url.port}"
            except ValueError:
                origin = raw  # refused when sent; queued on its own meanwhile
            if len(self._origins) >= 4096:
                self._origins.clear()
            self._origins[raw] = origin
        return origin

    def _checked_url(self, raw: str) -> URL:
        """The parsed, policy-checked URL; a webhook's URL is parsed once,
        not on every request (yarl parsing showed in the profile)."""
        url = self._urls.get(raw)
        if url is None:
            url = URL(raw, encoded=False)
            check_url(
                url, allow_http=self._settings.allow_http, allow_private=self._settings.allow_private_networks
            )
            if len(self._urls) >= 4096:
                self._urls.clear()
            self._urls[raw] = url
        return url

    async def _run(self, job: Job) -> None:
        # Cancellation (shutdown) skips the record: the worker hands the lease back.
        try:
            try:
                outcome = await self.attempt(job)
            except Exception as exc:  # a bug must cost one attempt, never the delivery
                self._log.exception("attempt crashed", delivery_id=job.id)
                outcome = self._failure(job, datetime.now(UTC), 0.0, "connection", f"internal error: {exc!r}")
            self._record(outcome)
        finally:
            self._tasks.pop(job.id, None)
            _decrement(self._per_webhook, job.webhook_id)
            _decrement(self._running, job.origin)
            # Claim again when there is room for a batch and this webhook is
            # no longer saturated (a claim would skip a saturated one).
            if (
                self.backlog
                and self.free_slots() >= self._refill_at
                and self._per_webhook.get(job.webhook_id, 0) < self._saturated_at
            ):
                self._slot_freed.set()

    def _next_queued(self, origin: str) -> Job | None:
        """The origin's next queued job, for the lane that just finished one
        there, the webhooks queued there taking turns: first in, first out,
        one webhook's burst queued ahead of another customer's delivery on
        the same host (a shared SaaS endpoint) held it back for as many
        rounds of the slow webhook's requests as it had queued. Skips jobs
        whose lease would end before a request could: behind a slow receiver
        a job can queue for several request timeouts, and sent after its
        lease ended it would run beside another worker's claim of the same
        delivery. A job skipped is only forgotten here; its row is due again
        when the lease ends, and whoever claims it then sends it, once."""
        turns = self._queued.get(origin)
        if not turns or not self.claiming:
            return None
        chosen = None
        skipped: list[int] = []
        would_end = self._latest_request_end()
        while turns:
            webhook_id, queue = next(iter(turns.items()))
            job = queue.popleft()
            if not queue:
                del turns[webhook_id]
            elif len(turns) > 1:
                del turns[webhook_id]
                turns[webhook_id] = queue  # to the back of the line
            self._queued_count -= 1
            if job.lease_ends > would_end:
                chosen = job
                break
            skipped.append(job.id)
            _decrement(self._per_webhook, job.webhook_id)
        if not turns:
            del self._queued[origin]
        self._log_skipped(skipped, origin)
        return chosen

    def _next_waiting(self) -> Job | None:
        """The oldest job leased ahead of a free slot, for a lane that just
        finished one and has none queued at its origin. One whose origin is
        at its limit meanwhile joins that origin's queue instead; one whose
        lease would end before a request could is left, as in
        :meth:`_next_queued`."""
        if not self._waiting or not self.claiming:
            return None
        skipped: list[int] = []
        would_end = self._latest_request_end()
        chosen = None
        while self._waiting:
            job = self._waiting.popleft()
            if job.lease_ends <= would_end:
                skipped.append(job.id)
                _decrement(self._per_webhook, job.webhook_id)
            elif self._must_queue(job.origin):
                self._queue(job)
            else:
                chosen = job
                break
        self._log_skipped(skipped, None)
        return chosen

    def _latest_request_end(self) -> float:
        """When a request started now ends at the latest (its timeout, and the
        sweep's tick): a queued job whose lease ends by then is not sent."""
        return time.monotonic() + self._settings.request_timeout + self._tick

    def _log_skipped(self, skipped: list[int], origin: str | None) -> None:
        if skipped:
            self._log.info(
                "queued deliveries left to a later claim: their lease would end before a request could",
                origin=origin,
                delivery_ids=skipped,
                lease_seconds=self._settings.lease_seconds,
            )

    def _failure(
        self,
        job: Job,
        attempted_at: datetime,
        duration_ms: float,
        error_class: str,
        error: str,
        *,
        status_code: int | None = None,
        response_body: str | None = None,
        retry_after: float | None = None,
        final: bool = False,
        disable_reason: str | None = None,
    ) -> Outcome:
        schedule = self._settings.retry_schedule
        last = final or job.attempt >= len(schedule) + 1
        return Outcome(
            job=job,
            status="failed" if last else "pending",
            retry_in=0.0
            if last
            else next_delay(
                schedule, job.attempt, jitter=self._settings.retry_jitter, retry_after=retry_after
            ),
            attempted_at=attempted_at,
            duration_ms=duration_ms,
            status_code=status_code,
            error_class=error_class,
            error=_text(error)[:1000],
            response_body=response_body,
            disable_reason=disable_reason,
        )

    async def attempt(self, job: Job) -> Outcome:
        """One HTTP attempt; never raises for anything the receiver does."""
        settings = self._settings
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()

        def elapsed() -> float:
            return (time.perf_counter() - started) * 1000

        if not job.enabled:
            return self._failure(job, attempted_at, 0.0, "invalid_target", "webhook disabled", final=True)
        if job.secret_error:
            return self._failure(job, attempted_at, 0.0, "invalid_target", job.secret_error)
        if job.payload_error:
            return self._failure(job, attempted_at, 0.0, "invalid_payload", job.payload_error, final=True)
        headers = sign_headers(
            event_id=job.event_id,
            body=job.body,
            secrets=job.secrets,
            timestamp=int(time.time()),
            signature_header=settings.signature_header,
        )
        headers["Content-Type"] = "application/json"
        job.deadline = time.monotonic() + settings.request_timeout
        try:
            url = self._checked_url(job.url)
            async with self._session.post(url, data=job.body, headers=headers, allow_redirects=False) as resp:
                raw = await _read_capped(resp, settings.max_response_bytes, job)
                status = resp.status
                retry_after_header = resp.headers.get("Retry-After")
        except (TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not _timed_out(job):
                raise
            return self._failure(
                job, attempted_at, elapsed(), "timeout", f"no response within {settings.request_timeout}s"
            )
        except BlockedTarget as exc:
            return self._failure(job, attempted_at, elapsed(), "invalid_target", str(exc))
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, BlockedTarget):
                return self._failure(job, attempted_at, elapsed(), "invalid_target", str(exc.os_error))
            return self._failure(job, attempted_at, elapsed(), "dns", str(exc))
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            return self._failure(job, attempted_at, elapsed(), "connection", f"{type(exc).__name__}: {exc}")
        body_text = _text(raw)
        if 200 <= status < 300:
            return Outcome(
                job=job,
                status="delivered",
                retry_in=0.0,
                attempted_at=attempted_at,
                duration_ms=elapsed(),
                status_code=status,
                response_body=body_text,
            )
        if 300 <= status < 400:
            return self._failure(
                job, attempted_at, elapsed(), "redirect", f"HTTP {status}: redirects are not followed",
                status_code=status, response_body=body_text,
            )  # fmt: skip
        if status == 410:
            return self._failure(
                job, attempted_at, elapsed(), "http", "HTTP 410 Gone: the receiver asked to stop",
                status_code=status, response_body=body_text, final=True,
                disable_reason="receiver answered 410 Gone",
            )  # fmt: skip
        retry_after = parse_retry_after(retry_after_header) if status in (429, 503) else None
        return self._failure(
            job, attempted_at, elapsed(), "http", f"HTTP {status}",
            status_code=status, response_body=body_text, retry_after=retry_after,
        )  # fmt: skip

    # -- shutdown ---------------------------------------------------------

    async def drain(self, grace: float) -> list[int]:
        """Stop claiming, let requests finish within ``grace`` seconds, cancel
        the rest; returns the ids whose leases must be handed back."""
        self.claiming = False
        self.wake.set()
        for _, waiter in self._idle:  # idle lanes end; busy ones after their request
            if not waiter.done():
                waiter.set_result(None)
        self._idle.clear()
        # Queued deliveries were never sent: straight back to the queue.
        queued = [job.id for turns in self._queued.values() for queue in turns.values() for job in queue]
        queued += [job.id for job in self._waiting]
        self._queued.clear()
        self._queued_count = 0
        self._waiting.clear()
        tasks = {delivery_id: lane for delivery_id, (lane, _) in self._tasks.items()}
        if tasks:
            await asyncio.wait(tasks.values(), timeout=grace)
        unfinished = [delivery_id for delivery_id, task in tasks.items() if not task.done()]
        for delivery_id in unfinished:
            tasks[delivery_id].cancel()
        if unfinished:
            await asyncio.gather(*(tasks[i] for i in unfinished), return_exceptions=True)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        return queued + unfinished
