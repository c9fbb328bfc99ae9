"""The web console's server time with a large delivery log: ``python -m bench --only console``.

One owner with 100,000 deliveries (two webhooks, one attempt each, 2% failed,
1% of another event type) and another owner with 20,000, inserted with
set-based SQL. Each page is requested in-process through the ASGI app
(httpx's ASGI transport: no network, no browser), signed in as the owner,
after a warm-up; the figure is the median and the 95th percentile of the
server's time per request. Target: the delivery log under 50 ms.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import psycopg

from outbox_worker import api_keys
from outbox_worker.api import create_app
from outbox_worker.settings import Settings

OWNER = "console-bench"
OTHER = "someone-else"
TARGET_MS = 50.0


class Database(Protocol):
    """A migrated database of the bench's own (bench.harness.BenchDatabase)."""

    url: str

    def execute(self, statement: str, params: Any = None) -> list[tuple[Any, ...]]: ...


def fill(db: Database, owner: str, deliveries: int) -> list[str]:
    """``deliveries`` events of ``owner`` fanned out to its two webhooks
    (alternately), each delivery with one attempt; returns the webhook ids."""
    hooks = [
        str(db.execute("select id from outbox.create_webhook(%s, %s, array['*'])", (owner, url))[0][0])
        for url in (f"http://127.0.0.1:9/{owner}/a", f"http://127.0.0.1:9/{owner}/b")
    ]
    db.execute(
        "insert into outbox.events (owner_id, event_type, data, created_at, dispatched_at) "
        "select %(owner)s, case when g %% 100 = 0 then 'customer.created' else 'order.created' end, "
        "       jsonb_build_object('id', 'ord_' || g, 'total', g %% 1000, 'currency', 'EUR'), "
        "       now() - make_interval(secs => (%(n)s - g) * 0.5), now() "
        "  from generate_series(1, %(n)s) g",
        {"owner": owner, "n": deliveries},
    )
    db.execute(
        "insert into outbox.deliveries (event_id, webhook_id, status, attempts, next_attempt_at, "
        "                               created_at, completed_at, last_status_code, last_error) "
        "select e.id, (%(hooks)s::uuid[])[1 + e.id %% 2], "
        "       case when e.id %% 50 = 0 then 'failed' else 'delivered' end::outbox.delivery_status, 1, "
        "       e.created_at, e.created_at, e.created_at + interval '20 ms', "
        "       case when e.id %% 50 = 0 then 500 else 200 end, "
        "       case when e.id %% 50 = 0 then 'HTTP 500' end "
        "  from outbox.events e where e.owner_id = %(owner)s",
        {"owner": owner, "hooks": hooks},
    )
    db.execute(
        "insert into outbox.delivery_attempts (delivery_id, attempt, attempted_at, duration_ms, status_code, "
        "                                      error_class, response_body, worker_id) "
        "select d.id, 1, d.completed_at, 5 + (d.id %% 40), d.last_status_code, "
        "       case when d.status = 'failed' then 'http' end, 'ok', 'bench' "
        "  from outbox.deliveries d join outbox.webhooks w on w.id = d.webhook_id "
        " where w.owner_id = %(owner)s",
        {"owner": owner},
    )
    return hooks


async def _time_pages(url: str, key: str, pages: dict[str, str], runs: int) -> dict[str, list[float]]:
    settings = Settings(database_url=url, api_rate_per_key=0, api_rate_per_ip=0)
    app = create_app(settings)
    timings: dict[str, list[float]] = {name: [] for name in pages}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.bench") as client,
    ):
        signed_in = await client.post("/console/login", data={"key": key}, follow_redirects=True)
        assert signed_in.status_code == 200, signed_in.text
        for name, path in pages.items():
            path = path.format(**await _ids(client))
            for i in range(runs + 5):  # five to warm up
                started = time.perf_counter()
                answer = await client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                assert answer.status_code == 200, (path, answer.status_code)
                if i >= 5:
                    timings[name].append(elapsed)
    return timings


async def _ids(client: httpx.AsyncClient) -> dict[str, str]:
    log = (await client.get("/console/deliveries")).text
    ids = [int(x) for x in re.findall(r"/console/deliveries/(\d+)", log)]
    hooks = re.findall(r'<option value="([0-9a-f-]{36})"', log)
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    return {"middle": str(ids[0] // 2), "delivery": str(ids[0]), "webhook": hooks[0], "hour_ago": hour_ago}


def measure(db: Database, deliveries: int, runs: int) -> dict[str, tuple[float, float]]:
    """Fill ``db`` and time each page: name -> (p50, p95) in ms."""
    fill(db, OWNER, deliveries)
    fill(db, OTHER, deliveries // 5)
    db.execute("analyze")
    with psycopg.connect(db.url, autocommit=True) as conn:
        key = api_keys.create_api_key(conn, OWNER).key
    pages = {
        "delivery log, first page": "/console/deliveries",
        "delivery log, a page in the middle": "/console/deliveries?before={middle}",
        "delivery log, one webhook": "/console/deliveries?webhook={webhook}",
        "delivery log, failed only (2%)": "/console/deliveries?status=failed",
        "delivery log, one event type (1%)": "/console/deliveries?event_type=customer.created",
        "delivery log, an event type with none": "/console/deliveries?event_type=inquiry.received",
        "delivery log, created in the last hour": "/console/deliveries?since={hour_ago}",
        "attempt detail": "/console/deliveries/{delivery}",
        "health (1 h and 1 d charts)": "/console/health",
        "webhooks": "/console/webhooks",
    }
    timings = asyncio.run(_time_pages(db.url, key, pages, runs))
    return {
        name: (statistics.median(values), sorted(values)[max(0, round(len(values) * 0.95) - 1)])
        for name, values in timings.items()
    }
