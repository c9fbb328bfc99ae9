"""One signed HTTP attempt, turned into an :class:`~outbox_worker.jobs.Outcome`.

No queues and no database: given a leased :class:`~outbox_worker.jobs.Job`,
sign its body, POST it under the send-time network policy, read at most
``max_response_bytes`` of the answer and say what happened, including when
the next attempt is due. Nothing the receiver does raises out of here.

The request goes through :mod:`~outbox_worker.client` (pyreqwest), whose
connect and whole-request timeouts end most slow attempts; the sender's
sweep is the bound that always holds (it cancels an attempt past
``job.deadline`` and marks ``job.timed_out``). This module sets the deadline
and tells that cancellation from shutdown's.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime

from pyreqwest.exceptions import PyreqwestError
from yarl import URL

from outbox_worker.client import HttpClient, ResolveError
from outbox_worker.jobs import Headers, Job, Outcome
from outbox_worker.netpolicy import HOLD_SECONDS, BlockedTarget, UrlPolicy, check_url
from outbox_worker.retry import next_delay, parse_retry_after
from outbox_worker.settings import Settings
from outbox_worker.signing import sign_headers


def storable_text(raw: bytes | str) -> str:
    """``raw`` as text PostgreSQL can store in a text column and its JSON."""
    # Postgres text cannot hold NUL, nor its JSON a lone surrogate (an
    # exception's text can carry one); receivers can send anything.
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", "replace")
    else:
        text = raw.encode("utf-8", "replace").decode()
    return text.replace("\x00", "\ufffd")


def timed_out(job: Job) -> bool:
    """Whether a cancellation caught in ``job``'s attempt was the timeout
    sweep's (then it is taken back: the lane goes on), not shutdown's."""
    if not job.timed_out:
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


_URL = re.compile(r"https?://[^\s()]+")


def _origin_only(match: re.Match[str]) -> str:
    # A URL's path and query can hold a receiver's token: logs and the
    # attempt log keep its origin only.
    try:
        url = URL(match.group(0))
        return f"{url.scheme}://{url.host}:{url.port}"
    except ValueError:
        return "<url>"


def describe(exc: BaseException) -> str:
    """One line for a transport error: pyreqwest's message and its causes,
    every URL in them cut to its origin."""
    if isinstance(exc, PyreqwestError):
        causes = getattr(exc, "details", {}).get("causes") or []
        text = "; ".join([f"{type(exc).__name__}: {exc.message}", *(c["message"] for c in causes)])
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _URL.sub(_origin_only, text)


class Attempter:
    """Sends one job's request and judges the answer."""

    def __init__(self, http: HttpClient, settings: Settings, policy: UrlPolicy) -> None:
        self._http = http
        self._settings = settings
        self._policy = policy
        self.message_prefix = ""  # the database's (outbox.config.message_id_prefix), read at start
        self._urls: dict[str, URL] = {}
        policy.on_change(self._urls.clear)  # checked under the old policy
        # The database refuses these names for a webhook's own headers, but
        # it knows only the default signature header: a renamed one
        # (OUTBOX_SIGNATURE_HEADER) is kept from being overridden here.
        signature = settings.signature_header.lower()
        self._ours = frozenset(
            {signature, f"{signature}-previous", "webhook-id", "webhook-timestamp", "webhook-signature",
             "content-type", "content-length", "host", "user-agent"}
        )  # fmt: skip

    def failure(
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
        """A failed attempt: retried on the schedule, or ``failed`` when it
        was the last one (or ``final``: retrying cannot help)."""
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
            error=storable_text(error)[:1000],
            response_body=response_body,
            disable_reason=disable_reason,
        )

    def held(self, job: Job, attempted_at: datetime, reason: str) -> Outcome:
        """A delivery the URL policy refuses until a setting changes: due again
        in :data:`HOLD_SECONDS` with its attempts unchanged (the completer
        logs no attempt for it), the reason naming that setting."""
        return Outcome(
            job=job,
            status="pending",
            retry_in=HOLD_SECONDS,
            attempted_at=attempted_at,
            duration_ms=0.0,
            error_class="policy",
            error=f"held, not sent: {reason}",
        )

    def internal_error(self, job: Job, exc: BaseException) -> Outcome:
        """The outcome of an attempt that crashed on a bug of ours: it costs
        one attempt, never the delivery."""
        return self.failure(job, datetime.now(UTC), 0.0, "connection", f"internal error: {exc!r}")

    def _with_webhook_headers(self, custom: Headers, ours: dict[str, str]) -> dict[str, str]:
        """The webhook's own headers, then ours: a name the worker sets is never the webhook's."""
        merged = {name: value for name, value in custom if name.lower() not in self._ours}
        merged.update(ours)
        return merged

    def _checked_url(self, raw: str) -> URL:
        """The parsed, policy-checked URL; a webhook's URL is parsed once,
        not on every request (yarl parsing showed in the profile)."""
        url = self._urls.get(raw)
        if url is None:
            url = URL(raw, encoded=False)
            check_url(url, self._policy)
            if len(self._urls) >= 4096:
                self._urls.clear()
            self._urls[raw] = url
        return url

    async def attempt(self, job: Job, traceparent: str | None = None) -> Outcome:
        """One HTTP attempt; never raises for anything the receiver does.
        ``traceparent``: the header to send (a worker that traces passes it)."""
        settings = self._settings
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()

        def elapsed() -> float:
            # To 0.1 ms, as stored and shown: more digits are noise, not precision.
            return round((time.perf_counter() - started) * 1000, 1)

        if not job.enabled:
            return self.failure(job, attempted_at, 0.0, "invalid_target", "webhook disabled", final=True)
        if job.secret_error:
            return self.failure(job, attempted_at, 0.0, "invalid_target", job.secret_error)
        if job.payload_error:
            return self.failure(job, attempted_at, 0.0, "invalid_payload", job.payload_error, final=True)
        headers = sign_headers(
            event_id=job.event_id,
            body=job.body,
            secrets=job.secrets,
            timestamp=int(time.time()),
            signature_header=settings.signature_header,
            message_prefix=self.message_prefix,
        )
        headers["Content-Type"] = "application/json"
        if job.headers:
            headers = self._with_webhook_headers(job.headers, headers)
        if traceparent is not None:
            headers["traceparent"] = traceparent
        job.deadline = time.monotonic() + settings.request_timeout
        try:
            url = self._checked_url(job.url)
            answer = await self._http.post(url, job.body, headers, lambda: timed_out(job), self._policy)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not timed_out(job):
                raise
            return self.failure(
                job, attempted_at, elapsed(), "timeout", f"no response within {settings.request_timeout}s"
            )
        except BlockedTarget as exc:
            return self._refused(job, attempted_at, exc)
        except ResolveError as exc:
            return self.failure(job, attempted_at, elapsed(), "dns", str(exc))
        except (PyreqwestError, ValueError, OSError) as exc:
            return self.failure(job, attempted_at, elapsed(), "connection", describe(exc))
        body_text = storable_text(answer.body)
        return self._judge(job, attempted_at, elapsed(), answer.status, body_text, answer.retry_after)

    def _refused(self, job: Job, attempted_at: datetime, exc: BlockedTarget) -> Outcome:
        """Held when a setting would allow the target, else failed at once:
        no retry can reach an address that is never allowed."""
        if exc.held:
            return self.held(job, attempted_at, str(exc))
        return self.failure(job, attempted_at, 0.0, "invalid_target", str(exc), final=True)

    def _judge(
        self,
        job: Job,
        attempted_at: datetime,
        duration_ms: float,
        status: int,
        body_text: str,
        retry_after_header: str | None,
    ) -> Outcome:
        """The outcome of an answer: 2xx delivered, a redirect or any other
        status retried, 410 Gone final (and the webhook disabled)."""
        if 200 <= status < 300:
            return Outcome(
                job=job,
                status="delivered",
                retry_in=0.0,
                attempted_at=attempted_at,
                duration_ms=duration_ms,
                status_code=status,
                response_body=body_text,
            )
        if 300 <= status < 400:
            return self.failure(
                job, attempted_at, duration_ms, "redirect", f"HTTP {status}: redirects are not followed",
                status_code=status, response_body=body_text,
            )  # fmt: skip
        if status == 410:
            return self.failure(
                job, attempted_at, duration_ms, "http", "HTTP 410 Gone: the receiver asked to stop",
                status_code=status, response_body=body_text, final=True,
                disable_reason="receiver answered 410 Gone",
            )  # fmt: skip
        retry_after = parse_retry_after(retry_after_header) if status in (429, 503) else None
        return self.failure(
            job, attempted_at, duration_ms, "http", f"HTTP {status}",
            status_code=status, response_body=body_text, retry_after=retry_after,
        )  # fmt: skip
