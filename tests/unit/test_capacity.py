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


def job(job_id: int, webhook: uuid.UUID, origin: str, lease_ends: float = math.inf) -> Job:
    j = Job(job_id, job_id, webhook, 1, origin + "/hook", ("whsec_x",), b"{}", lease_ends=lease_ends)
    j.origin = origin
    return j


def ledger(**overrides: object) -> CapacityLedger:
    return CapacityLedger(settings("postgresql://", **overrides))


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
    assert book.busy_webhooks() == [] and not book.saturated(hook)
    admit_all(book, [job(5, hook, A)], lane)
    assert book.busy_webhooks() == [hook] and book.saturated(hook)
    assert not book.any_unsaturated([hook])


async def test_shutdown_takes_every_unsent_job(lane: Lane) -> None:
    book = ledger(concurrency=2, per_host_concurrency=1)
    hook = uuid.uuid4()
    admit_all(
        book, [job(1, hook, A), job(2, hook, A), job(3, uuid.uuid4(), B), job(4, uuid.uuid4(), "x")], lane
    )
    assert sorted(book.take_unsent()) == [2, 4]
    assert (book.queued, book.waiting, book.in_flight) == (0, [], 2)
