"""Sender: leased deliveries -> lanes -> outcomes. Scheduling only.

The sender claims due deliveries in batches of at most its free slots
(``concurrency`` plus one refill leased ahead, so that a slot that frees
starts its next request without waiting for a claim), commits the lease,
and only then sends, with no transaction open. Requests run in lanes,
long-lived tasks that each send one request at a time (no more lanes than
requests ever ran at once); each request is one :mod:`~outbox_worker.attempt`
and its outcome goes to the completer, which writes outcomes in batches.
Leases expire on the database clock, so a delivery held by a dead worker is
claimed again by any replica. What this process holds is counted in its
:class:`~outbox_worker.capacity.CapacityLedger`, and nowhere else.

At most ``per_host_concurrency`` (the cap) requests per receiver origin
(scheme, host, port) run at once, so
at most that many per webhook. A claim or a fan-out leases a webhook at
most twice its cap, and nothing while it holds its cap plus a quarter of it
(``ahead``: queued ready, so that the slots its requests free are refilled
while the next claim is on its way), so a slow receiver holds at most 3 x
cap + ahead - 1 slots per webhook (5 x cap + ahead - 1 when a claim and a
fan-out overlap), never all of them. Those beyond the cap wait here, not in
the HTTP client's connection pool: a request's timeouts start when it is sent,
never while it queues, however many webhooks share a host, and the
webhooks queued for one host take turns at its slots.

Owners (tenants) are capped the same way: at most their share of
``concurrency`` (``OUTBOX_OWNER_SHARE``) runs at once, a claim or fan-out
leases an owner at most twice that many and nothing while it holds its
share plus a quarter, and the rest of its jobs wait here. So one owner's
slow receivers hold at most 3 x share + a quarter of it - 1 slots; when a
claim and a fan-out overlap, the jobs beyond that are given back at once,
unsent, and every other owner still finds slots free.

Request timeouts are one sweep, not a timer per request: every ``tick``
while requests run, the sender cancels those past their deadline, so a
request ends at most one tick after ``request_timeout``; the tick is short
enough that it still ends before its lease.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool
from yarl import URL

from outbox_worker import db
from outbox_worker.attempt import Attempter
from outbox_worker.budget import Share
from outbox_worker.capacity import CapacityLedger, Lane
from outbox_worker.jobs import (
    Job,
    Outcome,
    bodies_params,
    lease_limit_per_webhook,
    owner_lease_limit,
    pace_horizon,
    readable_bodies,
    timeout_tick,
)
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings
from outbox_worker.signals import SenderSignals
from outbox_worker.signing import event_body

if TYPE_CHECKING:
    from outbox_worker.spans import Tracing

# A paced job more than this late for its slot is given back, not sent: a
# process that stalled would otherwise send a burst over its webhook's limit.
LATE_SLOT = 0.05


class Sender:
    """Claims, hands jobs to lanes, sweeps timeouts, drains on shutdown.
    Implements :class:`~outbox_worker.jobs.Handoff` for the dispatcher."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        attempter: Attempter,
        settings: Settings,
        record: Callable[[Outcome], None],
        log: Any,
        tracing: Tracing | None = None,
        share: Share | None = None,
    ) -> None:
        self._pool = pool
        self._attempter = attempter
        # Chosen once: without tracing the lanes call the attempt itself.
        self._tracing = tracing
        self._attempt = tracing.traced(attempter.attempt) if tracing else attempter.attempt
        self._settings = settings
        self.box = SecretBox.from_keys(settings.secret_keys)
        self._record = record
        self._log = log.bind(component="sender")
        self.ledger = CapacityLedger(settings, share)
        self.signals = SenderSignals()
        self._sweep: asyncio.TimerHandle | None = None
        self._tick = timeout_tick(settings)
        self._pace_horizon = pace_horizon(settings)
        self._per_owner_claim = owner_lease_limit(settings)
        self._given_back: list[int] = []  # paced jobs whose slot passed, not yet released
        self._background: set[asyncio.Task[None]] = set()
        self._idle: list[tuple[Lane, asyncio.Future[Job | None]]] = []
        self._origins: dict[str, str] = {}
        self._skipped: list[uuid.UUID] = []  # saturated webhooks the last claim left out
        self._skipped_owners: list[str] = []  # and saturated owners
        self._claim_was_full = False
        self._slot_freed = asyncio.Event()
        self.wake = asyncio.Event()
        self.claiming = True
        # True while due rows may be waiting that a claim has not taken (a
        # full claim, saturated webhooks skipped, rows the dispatcher could
        # not lease to us). Only then does a finished request trigger a
        # claim; otherwise each delivery would cost an empty claim round trip.
        self.backlog = True

    # -- the handoff (jobs.Handoff) ---------------------------------------

    @property
    def in_flight(self) -> int:
        return self.ledger.in_flight

    def reserve(self, wanted: int) -> int:
        """Reserve up to ``wanted`` send slots (for a claim or a dispatch)."""
        return self.ledger.reserve(wanted) if self.claiming else 0

    def hand_over(self, jobs: list[Job], reserved: int) -> None:
        """Start the leased ``jobs`` and return the rest of a reservation."""
        ledger = self.ledger
        ledger.release(reserved)
        for job in jobs:
            if ledger.owner_full(job):  # a claim and a fan-out overlapped: see the docstring
                self._give_back(job.id)
                continue
            job.origin = self._origin(job.url)
            if ledger.admit(job):
                self._start(job)
        if reserved > len(jobs):
            self._slot_freed.set()
        self.signals.handed_over.fire()

    def busy_webhooks(self) -> list[uuid.UUID]:
        return self.ledger.busy_webhooks()

    def busy_owners(self) -> list[str]:
        return self.ledger.busy_owners()

    def note_backlog(self) -> None:
        """Due rows exist that nobody leased (the dispatcher had no room)."""
        self.backlog = True
        self.wake.set()

    # -- claiming ---------------------------------------------------------

    async def claim_batch(self) -> int:
        """Lease due deliveries for the free slots and hand them over; how
        many. Fires ``signals.claimed`` whatever happened, room or none."""
        try:
            return await self._claim()
        finally:
            self.signals.claimed.fire()

    async def _claim(self) -> int:
        if not (self.claiming and self.ledger.has_room()):
            self._claim_was_full = False
            return 0
        jobs: list[Job] = []
        reserved = 0
        try:
            tracing = self._tracing
            started = time.time_ns() if tracing else 0
            async with self._pool.connection() as conn:
                # Reserved once the connection is ours: a database slow to
                # hand one out holds no slots of the budget it may share.
                reserved = self.reserve(self._settings.batch_size)
                if not reserved:
                    self._claim_was_full = False
                    return 0
                busy = self._skipped = self.busy_webhooks()
                busy_owners = self._skipped_owners = self.busy_owners()
                lease_ends = time.monotonic() + self._settings.lease_seconds
                rows = await db.fetch_async(
                    conn,
                    "claim_deliveries",
                    {
                        "limit": reserved,
                        "busy_webhooks": busy,
                        "busy_owners": busy_owners,
                        "per_webhook": lease_limit_per_webhook(self._settings),
                        "per_owner": self._per_owner_claim,
                        "pace_horizon": self._pace_horizon,
                        "lease_seconds": self._settings.lease_seconds,
                        "worker_id": self._settings.worker_id,
                        "traced": tracing is not None,
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
                if tracing and rows:
                    tracing.adopt(jobs, rows, "outbox claim", started)
                # A claim short of its room took every due row it could: claiming
                # again at once would only come back empty.
                self._claim_was_full = len(jobs) >= reserved
                if not self._claim_was_full and self.ledger.share is not None:
                    self.ledger.share.sated()  # the other databases may have their slots back
                self.hand_over(jobs, reserved)
                # Rows may remain for webhooks or owners skipped as saturated,
                # or capped at their limit by this claim: a webhook so capped
                # is saturated now, an owner is not (its share per claim is
                # below its share plus a quarter), so count its rows. Missed,
                # one owner's backlog waited for the poll interval after
                # each claim: 73 deliveries/s instead of thousands.
                self.backlog = (
                    self._claim_was_full
                    or bool(busy or busy_owners)
                    or bool(self.busy_webhooks() or self.busy_owners())
                    or self._owner_capped(jobs)
                )
                reserved = 0
                if bodies:
                    await db.fetch_async(conn, "store_bodies", bodies_params(readable_bodies(bodies)))
            return len(jobs)
        finally:
            if reserved:
                self.hand_over(jobs, reserved)

    def _owner_capped(self, jobs: list[Job]) -> bool:
        """Whether a claim took some owner's whole share (more may be due)."""
        cap = self._per_owner_claim
        if len(jobs) < cap:
            return False
        per_owner: dict[str, int] = {}
        for job in jobs:
            n = per_owner[job.owner_id] = per_owner.get(job.owner_id, 0) + 1
            if n >= cap:
                return True
        return False

    async def run(self) -> None:
        """Claim whenever there is work and room: on a wake-up, a freed slot
        after a full claim, or the poll interval."""
        delay = 0.1
        refill_at = self.ledger.refill_at
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
            if self._claim_was_full and self.ledger.free_slots() >= refill_at:
                continue  # more may be due right now
            full = self.backlog
            self._slot_freed.clear()
            if (
                full
                and self.ledger.free_slots() >= refill_at
                and self.ledger.any_unsaturated(self._skipped, self._skipped_owners)
            ):
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

    # -- lanes --------------------------------------------------------------

    def _start(self, job: Job) -> None:
        while self._idle:
            lane, waiter = self._idle.pop()
            if not waiter.done():  # else cancelled while it waited (shutdown)
                self._bind(job, lane)
                waiter.set_result(job)
                return
        self._bind(job, asyncio.create_task(self._lane(job), name="sender-lane"))

    def _bind(self, job: Job, lane: Lane) -> None:
        """Count ``job`` as running, sent by ``lane``."""
        self.ledger.start(job, lane)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._tick, self._sweep_timeouts)

    def _sweep_timeouts(self) -> None:
        """Cancel the requests past their deadline; again after a tick while
        any runs. A lane is inside its job's attempt whenever this runs (it
        leaves the ledger's running jobs before it awaits anything else), so
        the cancellation lands in that request, never in the lane's next one."""
        now = time.monotonic()
        for lane, job in self.ledger.running():
            if job.deadline <= now and not job.timed_out:
                job.timed_out = True
                lane.cancel()
        self._sweep = (
            asyncio.get_running_loop().call_later(self._tick, self._sweep_timeouts)
            if self.ledger.in_flight
            else None
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
                # timeout that fired as its request ended (docs/performance.md).
                # The delivery's outcome is not recorded: its lease expires and
                # it is sent again.
                lane.uncancel()
                self._log.warning("request cancelled outside shutdown: sent again when its lease expires",
                                  delivery_id=job.id)  # fmt: skip
            except Exception:  # a bug in the bookkeeping must not stop the lane
                self._log.exception("sender bookkeeping failed", delivery_id=job.id)
            finished = job
            job = self._next(finished.origin)
            if job is not None:
                self._bind(job, lane)
            if self.ledger.owner_waits(finished.owner_id):
                self._start_owners_next(finished.owner_id)
            if job is not None:
                continue
            if not self.claiming:
                return
            waiter: asyncio.Future[Job | None] = loop.create_future()
            self._idle.append((lane, waiter))
            job = await waiter

    async def _run(self, job: Job) -> None:
        # Cancellation (shutdown) skips the record: the worker hands the lease back.
        try:
            if job.send_at:  # its webhook's rate limit booked this slot
                wait = job.send_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -LATE_SLOT:
                    # This process was busy past the slot: sent now, it would
                    # bunch with the slots after it, over the limit. Handed
                    # back, a later claim books it a fresh slot.
                    self._give_back(job.id)
                    return
            try:
                outcome = await self._attempt(job)
            except Exception as exc:  # a bug must cost one attempt, never the delivery
                self._log.exception("attempt crashed", delivery_id=job.id)
                outcome = self._attempter.internal_error(job, exc)
            self._record(outcome)
        finally:
            ledger = self.ledger
            ledger.finish(job)
            # Claim again when there is room for a batch and this webhook and
            # owner are no longer saturated (a claim would skip them).
            room = ledger.free_slots() >= ledger.refill_at
            if self.backlog and room and not ledger.saturated(job):
                self._slot_freed.set()
            self.signals.slot_freed.fire()

    def _give_back(self, delivery_id: int) -> None:
        """Release a lease unsent, batched with others given back meanwhile."""
        self._given_back.append(delivery_id)
        if len(self._given_back) == 1:
            task = asyncio.create_task(self._release_given_back(), name="sender-give-back")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _release_given_back(self) -> None:
        await asyncio.sleep(0)  # the others of this moment join the batch
        ids, self._given_back = self._given_back, []
        try:
            async with self._pool.connection() as conn:
                await db.fetch_async(
                    conn, "release_leases", {"ids": ids, "worker_id": self._settings.worker_id}
                )
        except Exception as exc:  # the leases end on their own; the slots are only later
            self._log.warning("could not give back late slots", error=str(exc).strip(), deliveries=len(ids))
        self.note_backlog()

    def _next(self, origin: str) -> Job | None:
        """The job for a lane that just finished one at ``origin``: that
        origin's next queued job, else the oldest leased ahead."""
        if not self.claiming:
            return None
        job, skipped = self.ledger.next_queued(origin)
        self._log_skipped(skipped, origin)
        if job is None:
            job, skipped = self.ledger.next_waiting()
            self._log_skipped(skipped, None)
        return job

    def _start_owners_next(self, owner: str) -> None:
        """Start the jobs queued behind ``owner`` that its request just ended
        made room for (besides the lane's own next job, which may be anyone's)."""
        if not self.claiming:
            return
        ready, skipped = self.ledger.next_for_owner(owner)
        self._log_skipped(skipped, None)
        for job in ready:
            self._start(job)

    def _log_skipped(self, skipped: list[int], origin: str | None) -> None:
        if skipped:
            self._log.info(
                "queued deliveries left to a later claim: their lease would end before a request could",
                origin=origin,
                delivery_ids=skipped,
                lease_seconds=self._settings.lease_seconds,
            )

    def _origin(self, raw: str) -> str:
        """The receiver origin a URL's requests are counted under: scheme,
        host and port (what a connection pool keys its connections by)."""
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
        unsent = self.ledger.take_unsent()  # never sent: straight back to the queue
        tasks = {job.id: lane for lane, job in self.ledger.running()}
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
        self.signals.drained.fire()
        return unsent + unfinished
