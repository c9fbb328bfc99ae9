"""The capacity ledger on its own: every count the sender keeps, no I/O."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from outbox_worker.capacity import CapacityLedger, Lane
from outbox_worker.jobs import Job
from tests.workers import settings

A, B = "http://a:80", "http://b:80"


def job(
    job_id: int, webhook: uuid.UUID, origin: str, lease_ends: float = math.inf, owner: str | None = None
) -> Job:
    """A leased job; unless told, its webhook is the only one of its owner."""
    j = Job(job_id, job_id, webhook, 1, origin + "/hook", ("whsec_x",), b"{}", lease_ends=lease_ends)
    j.origin = origin
    j.owner_id = str(webhook) if owner is None else owner
    return j


def ledger(**overrides: object) -> CapacityLedger:
    """A ledger with no owner cap unless a test sets ``owner_share``."""
    return CapacityLedger(settings("postgresql://", **{"owner_share": 1.0, **overrides}))


@pytest.fixture
async def lane() -> AsyncIterator[Lane]:
    task = asyncio.create_task(asyncio.sleep(0))
    yield task
    await task


def admit_all(book: CapacityLedger, jobs: list[Job], lane: Lane) -> list[int]:
    """Admit ``jobs`` as the sender does; the ids started."""
    started = []
    for j in jobs:
        if book.admit(j):
            book.start(j, lane)
            started.append(j.id)
    return started


def test_free_slots_are_the_concurrency_plus_one_refill_less_what_is_held() -> None:
    book = ledger(concurrency=8, batch_size=200)
    assert book.refill_at == 2 and book.free_slots() == 10
    assert book.reserve(20) == 10 and book.free_slots() == 0
    assert book.reserve(1) == 0
    book.release(10)
    assert book.free_slots() == 10


async def test_a_host_at_its_limit_queues_and_a_full_process_waits(lane: Lane) -> None:
    book = ledger(concurrency=4, per_host_concurrency=2, batch_size=200)
    hook_a, hook_b = uuid.uuid4(), uuid.uuid4()
    jobs = [job(1, hook_a, A), job(2, hook_a, A), job(3, hook_a, A), job(4, hook_b, B), job(5, hook_b, B)]
    jobs.append(job(6, hook_b, B))  # B at its limit: queued, not waiting
    assert admit_all(book, jobs, lane) == [1, 2, 4, 5]
    assert (book.in_flight, book.queued, book.waiting) == (4, 2, [])
    extra = job(7, uuid.uuid4(), "http://c:80")
    assert not book.admit(extra)  # every slot runs: it waits for any slot
    assert book.waiting == [7]
    assert book.free_slots() == 4 + 1 - 7


async def test_webhooks_queued_at_one_origin_take_turns(lane: Lane) -> None:
    book = ledger(concurrency=16, per_host_concurrency=1)
    bulk, other = uuid.uuid4(), uuid.uuid4()
    admit_all(book, [job(1, bulk, A), job(2, bulk, A), job(3, bulk, A), job(4, other, A)], lane)
    ((_, first),) = book.running()
    assert first.id == 1
    book.finish(first)
    order = []
    for _ in range(3):
        nxt, skipped = book.next_queued(A)
        assert nxt is not None and skipped == []
        order.append(nxt.id)
        book.start(nxt, lane)
        book.finish(nxt)
    assert order == [2, 4, 3]  # the other customer's delivery goes second, not last
    assert book.next_queued(A) == (None, [])


async def test_a_job_whose_lease_would_end_mid_request_is_forgotten(lane: Lane) -> None:
    book = ledger(concurrency=16, per_host_concurrency=1, request_timeout=5.0, lease_seconds=30.0)
    hook = uuid.uuid4()
    late = job(2, hook, A, lease_ends=time.monotonic() + 1.0)  # ends before a 5 s request could
    admit_all(book, [job(1, hook, A), late, job(3, hook, A)], lane)
    first = next(j for _, j in book.running())
    book.finish(first)
    nxt, skipped = book.next_queued(A)
    assert nxt is not None and nxt.id == 3 and skipped == [2]
    book.start(nxt, lane)
    assert (book.in_flight, book.queued, book.free_slots()) == (1, 0, 16 + 4 - 1)


async def test_a_webhook_at_its_limit_plus_a_quarter_is_busy(lane: Lane) -> None:
    book = ledger(concurrency=64, per_host_concurrency=4)
    hook = uuid.uuid4()
    assert book.saturated_at == 5
    admit_all(book, [job(i, hook, A) for i in range(1, 5)], lane)
    assert book.busy_webhooks() == [] and not book.saturated(job(9, hook, A))
    admit_all(book, [job(5, hook, A)], lane)
    assert book.busy_webhooks() == [hook] and book.saturated(job(9, hook, A))
    assert not book.any_unsaturated([hook], [])


async def test_shutdown_takes_every_unsent_job(lane: Lane) -> None:
    book = ledger(concurrency=2, per_host_concurrency=1)
    hook = uuid.uuid4()
    admit_all(
        book, [job(1, hook, A), job(2, hook, A), job(3, uuid.uuid4(), B), job(4, uuid.uuid4(), "x")], lane
    )
    assert sorted(book.take_unsent()) == [2, 4]
    assert (book.queued, book.waiting, book.in_flight) == (0, [], 2)


async def test_an_owner_runs_its_share_and_the_rest_of_its_jobs_wait(lane: Lane) -> None:
    book = ledger(concurrency=8, per_host_concurrency=8, owner_share=0.25, batch_size=200)
    assert (book.per_owner, book.owner_saturated_at) == (2, 2)
    hooks = [uuid.uuid4() for _ in range(5)]  # one owner's five webhooks, five hosts
    mine = [job(i, hooks[i % 5], f"http://h{i % 5}:80", owner="greedy") for i in range(1, 11)]
    assert admit_all(book, mine, lane) == [1, 2]  # its share; the others wait in the ledger
    assert (book.in_flight, book.queued, book.waiting) == (2, 8, [])
    assert book.busy_owners() == ["greedy"] and book.saturated(mine[0])
    assert book.any_unsaturated([], ["greedy"]) is False
    theirs = [job(20 + i, uuid.uuid4(), f"http://o{i}:80", owner=f"other-{i}") for i in range(4)]
    assert admit_all(book, theirs, lane) == [20, 21, 22, 23]  # other owners still find slots
    # One of the owner's requests ends: exactly one of its queued jobs may start.
    book.finish(mine[0])
    assert book.owner_waits("greedy")
    ready, skipped = book.next_for_owner("greedy")
    assert [j.id for j in ready] == [3] and skipped == []
    book.start(ready[0], lane)
    assert book.next_for_owner("greedy") == ([], [])  # at its share again
    # A job queued at its origin whose owner is at its share moves to the owner's queue.
    origin_queued = job(30, hooks[0], "http://h1:80", owner="greedy")
    book.admit(origin_queued)
    assert (book.in_flight, book.queued) == (6, 8)
    assert sorted(book.take_unsent()) == [4, 5, 6, 7, 8, 9, 10, 30]
    assert book.busy_owners() == ["greedy"]  # its two running requests and 30's lease: held until done


def test_owner_bookkeeping_is_constant_time_per_job() -> None:
    """Admitting, starting and finishing touch a fixed number of counters,
    whatever the number of owners, webhooks or queued jobs: the counters keep
    only what is held now, so nothing walks the owners seen so far. (Counted,
    not timed: a timing bound here failed on a busy machine.)"""
    book = ledger(concurrency=10_000, per_host_concurrency=10_000, owner_share=1.0, batch_size=200)
    lane_stub = object()
    largest = 0
    for i in range(20_000):
        j = job(i, uuid.uuid4(), "http://a:80", owner=f"o{i}")
        if book.admit(j):
            book.start(j, lane_stub)  # type: ignore[arg-type]
            largest = max(largest, len(book._per_owner), len(book._owner_running), len(book._per_webhook))
            book.finish(j)
    assert largest == 1
    assert (book._per_owner, book._owner_running, book._per_webhook) == ({}, {}, {})
    assert (book.in_flight, book.busy_owners(), book.busy_webhooks()) == (0, [], [])


def test_an_owner_holding_three_shares_and_a_quarter_is_full(lane: Lane) -> None:
    # 64 slots, a quarter each: 16 running, 16 + 16 x 2 + 4 = 52 held at most.
    book = ledger(concurrency=64, per_host_concurrency=64, owner_share=0.25)
    assert (book.per_owner, book.owner_held_cap) == (16, 52)
    hook = uuid.uuid4()
    jobs = [job(i, hook, A, owner="greedy") for i in range(60)]
    started = []
    for j in jobs:  # as the sender hands jobs over
        if book.owner_full(j):
            break
        started += admit_all(book, [j], lane)
    assert len(started) == 16  # its share runs, the rest queue
    assert book.queued == 52 - 16 and book.owner_full(jobs[52])
    assert not book.owner_full(job(99, uuid.uuid4(), B, owner="patient"))
    # With the share off, the cap is never reached.
    assert not ledger(concurrency=64).owner_full(jobs[0])
