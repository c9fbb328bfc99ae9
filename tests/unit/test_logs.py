"""Logs never carry a secret: not in a traceback's locals, not in a job's repr."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest
import structlog

from outbox_worker import logs
from outbox_worker.jobs import Job


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """Put back the configuration the test replaces: its stream is closed after it."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def pieces(secret: str, size: int = 16) -> list[str]:
    """Every ``size``-character piece of ``secret``: finding any one in a log is a leak."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def leaked(text: str, *secrets_: str) -> list[str]:
    return [piece for secret in secrets_ for piece in pieces(secret) if piece in text]


def fail_holding(api_key: str, job: Job) -> None:
    raise RuntimeError(f"request for delivery {job.id} failed")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_logged_traceback_shows_no_key_or_secret(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    api_key = "brut_" + secrets.token_hex(32)
    webhook_secret = "whsec_" + secrets.token_urlsafe(32)
    job = Job(7, 7, uuid.uuid4(), 1, "https://example.com/h", (webhook_secret,), b'{"card": "4111"}')
    logs.configure("info", fmt)
    log = logs.get_logger(component="test")
    try:
        fail_holding(api_key, job)
    except RuntimeError as exc:
        log.exception("api.internal_error")
        log.error("api.internal_error", error_type=type(exc).__name__, exc_info=exc)
    log.info("a job", job=job)
    written = capsys.readouterr().err
    assert "fail_holding" in written and "request for delivery 7 failed" in written  # tracebacks are there
    assert leaked(written, api_key, webhook_secret) == []
    assert "4111" not in written
