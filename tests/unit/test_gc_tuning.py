"""The worker process tunes CPython's cyclic collector (worker.tune_gc):
startup's survivors frozen, the young threshold raised, cycles still
reclaimed without anyone calling gc.collect()."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any, cast

import pytest

from outbox_worker import worker
from tests.workers import settings

# Run in a child: tune_gc changes the interpreter it runs in, and this
# pytest process is not a worker.
CHILD = textwrap.dedent(
    """
    import gc, json, weakref
    from outbox_worker.worker import tune_gc

    tune_gc({concurrency})
    frozen, threshold = gc.get_freeze_count(), gc.get_threshold()[0]

    class Node:
        pass

    first = None
    for i in range(300_000):
        node = Node()
        node.cycle = node  # garbage only the cyclic collector can free
        if first is None:
            first = weakref.ref(node)
    del node
    print(json.dumps({{"frozen": frozen, "threshold": threshold, "reclaimed": first() is None}}))
    """
)


def tuned(concurrency: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(concurrency=concurrency)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return cast(dict[str, Any], json.loads(out.stdout))


@pytest.mark.parametrize(
    ("concurrency", "threshold"),
    [(1, worker.GC_YOUNG_MIN), (256, worker.GC_YOUNG_MIN), (1000, 40_000), (2000, 80_000)],
)
def test_the_young_threshold_covers_the_requests_in_flight(concurrency: int, threshold: int) -> None:
    result = tuned(concurrency)
    assert result["threshold"] == threshold
    assert result["frozen"] > 10_000  # the imported modules, never walked again
    # Raised, not disabled: unreachable cycles still go, with no explicit collect.
    assert result["reclaimed"] is True


def test_the_worker_command_tunes_the_collector_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def tune(concurrency: int) -> None:
        calls.append(f"tune {concurrency}")

    async def serve(_: object) -> int:
        calls.append("serve")
        return 0

    monkeypatch.setattr(worker, "tune_gc", tune)
    monkeypatch.setattr(worker, "serve", serve)
    assert worker.run_forever(settings("postgresql://unused", concurrency=300)) == 0
    assert calls == ["tune 300", "serve"]
