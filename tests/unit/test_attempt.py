"""One attempt against a real loopback receiver: no queues, no database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from outbox_worker.attempt import Attempter
from outbox_worker.client import HttpClient
from outbox_worker.jobs import Job
from outbox_worker.netpolicy import HOLD_SECONDS
from outbox_worker.signing import verify_body_signature
from tests.receiver import Receiver
from tests.workers import open_policy, settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def attempter() -> AsyncIterator[Attempter]:
    config = settings("postgresql://", max_response_bytes=16)
    policy = open_policy(config)
    async with HttpClient(config, policy) as http:
        yield Attempter(http, config, policy)


def job(url: str, attempt: int = 1, **fields: Any) -> Job:
    return Job(7, 42, uuid.uuid4(), attempt, url, (SECRET,), b'{"event":"order.created"}', **fields)


async def test_a_2xx_is_delivered_signed_and_its_answer_capped(
    attempter: Attempter, receiver: Receiver
) -> None:
    async def long_answer(_: web.Request) -> web.Response:
        return web.Response(text="x" * 10_000)

    outcome = await attempter.attempt(job(receiver.script("/ok", long_answer)))
    assert (outcome.status, outcome.status_code, outcome.error_class) == ("delivered", 200, None)
    assert outcome.duration_ms == round(outcome.duration_ms, 1)  # to 0.1 ms, as stored and shown
    assert outcome.response_body == "x" * 16
    [got] = receiver.requests
    assert got.headers["webhook-id"] == "evt_42"
    assert verify_body_signature(got.body, got.headers["X-Brutlers-Signature"], SECRET)


async def test_a_failure_is_retried_on_the_schedule_until_the_last_attempt(
    attempter: Attempter, receiver: Receiver
) -> None:
    first = await attempter.attempt(job(receiver.script("/a", 500)))
    assert (first.status, first.error_class, first.retry_in) == ("pending", "http", 0.2)
    last = await attempter.attempt(job(receiver.script("/b", 500), attempt=4))
    assert (last.status, last.retry_in) == ("failed", 0.0)


async def test_redirects_are_not_followed_and_410_is_final(attempter: Attempter, receiver: Receiver) -> None:
    moved = await attempter.attempt(job(receiver.script("/moved", 302)))
    assert (moved.status, moved.error_class, moved.status_code) == ("pending", "redirect", 302)
    assert [r.path for r in receiver.requests] == ["/moved"]
    gone = await attempter.attempt(job(receiver.script("/gone", 410)))
    assert (gone.status, gone.disable_reason) == ("failed", "receiver answered 410 Gone")


async def test_what_cannot_be_sent_fails_without_a_request(attempter: Attempter, receiver: Receiver) -> None:
    url = receiver.url("/never")
    unreadable = await attempter.attempt(job(url, payload_error="payload cannot be read: nested too deep"))
    assert (unreadable.status, unreadable.error_class) == ("failed", "invalid_payload")
    disabled = await attempter.attempt(job(url, enabled=False))
    assert (disabled.status, disabled.error_class) == ("failed", "invalid_target")
    assert receiver.requests == []


async def test_a_target_a_setting_would_allow_is_held_with_its_attempts_unchanged(receiver: Receiver) -> None:
    config = settings("postgresql://", allow_private_networks=False)
    policy = open_policy(config)
    async with HttpClient(config, policy) as http:
        outcome = await Attempter(http, config, policy).attempt(job(receiver.url("/private"), attempt=4))
    assert (outcome.status, outcome.error_class, outcome.retry_in) == ("pending", "policy", HOLD_SECONDS)
    assert outcome.error and "OUTBOX_ALLOW_PRIVATE_NETWORKS=false" in outcome.error
    assert receiver.requests == []


async def test_a_target_never_allowed_fails_at_once(attempter: Attempter) -> None:
    outcome = await attempter.attempt(job("https://169.254.169.254/latest/meta-data/"))
    assert (outcome.status, outcome.error_class) == ("failed", "invalid_target")
    assert outcome.error and "never allowed" in outcome.error


async def test_the_sweeps_cancellation_ends_an_attempt_as_a_timeout(
    attempter: Attempter, receiver: Receiver
) -> None:
    hanging = job(receiver.script("/hang", "hang"))
    task = asyncio.create_task(attempter.attempt(hanging))
    while not receiver.requests:
        await receiver.arrived.wait()
    hanging.timed_out = True  # what the sender's sweep does at the deadline
    task.cancel()
    outcome = await task
    assert (outcome.status, outcome.error_class) == ("pending", "timeout")


async def test_a_connection_error_never_carries_the_urls_path_or_query(attempter: Attempter) -> None:
    outcome = await attempter.attempt(job("http://127.0.0.1:1/hook/secret-path?token=t0ps3cret"))
    assert outcome.error_class == "connection" and outcome.error
    assert "t0ps3cret" not in outcome.error and "secret-path" not in outcome.error
    assert "http://127.0.0.1:1" in outcome.error


async def test_the_webhooks_own_headers_go_along_and_never_replace_ours(receiver: Receiver) -> None:
    """The database refuses the default signature header's name; a renamed
    one (OUTBOX_SIGNATURE_HEADER) is guarded here, whatever its case."""
    config = settings("postgresql://", signature_header="X-Sig")
    own = (("Authorization", "Bearer t0ken"), ("x-sig", "forged"), ("WEBHOOK-ID", "evt_0"))
    policy = open_policy(config)
    async with HttpClient(config, policy) as http:
        outcome = await Attempter(http, config, policy).attempt(job(receiver.url("/h"), headers=own))
    assert outcome.status == "delivered"
    [got] = receiver.requests
    assert got.headers["Authorization"] == "Bearer t0ken"
    assert got.headers.getall("X-Sig") == [got.headers["X-Sig"]] != ["forged"]
    assert verify_body_signature(got.body, got.headers["X-Sig"], SECRET)
    assert got.headers.getall("webhook-id") == ["evt_42"]
