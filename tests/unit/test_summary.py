"""The worker's summary line: read from the counters the metrics keep, logged only while work flows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from outbox_worker import metrics
from outbox_worker.jobs import Job, Outcome


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def outcome(status: str, error_class: str | None = None) -> Outcome:
    job = Job(1, 1, uuid.uuid4(), 1, "https://example.com/", ("s",), b"{}")
    return Outcome(job, status, 0.0, datetime.now(UTC), 1.0, error_class=error_class)  # type: ignore[arg-type]


def test_a_line_per_interval_while_work_flows_and_none_when_idle() -> None:
    log = Lines()
    summary = metrics.Summary(60.0, lambda: 3, log)
    assert not summary.log_once() and log.lines == []  # nothing happened: no line
    for status, error_class in [("delivered", None), ("delivered", None), ("pending", "http"),
                                ("failed", "http"), ("pending", "policy")]:  # fmt: skip
        metrics.record_outcome(outcome(status, error_class))
    now = datetime.now(UTC)
    metrics.observe_dispatch([now - timedelta(seconds=0.1), now - timedelta(seconds=0.3)])
    assert summary.log_once()
    [(event, fields)] = log.lines
    assert event == "summary"
    assert {k: fields[k] for k in ("delivered", "retried", "failed", "held", "events", "in_flight")} == {
        "delivered": 2, "retried": 1, "failed": 1, "held": 1, "events": 2, "in_flight": 3,
    }  # fmt: skip
    assert 150 <= fields["lag_ms"] <= 1000
    assert not summary.log_once()  # only what changed since the last line
