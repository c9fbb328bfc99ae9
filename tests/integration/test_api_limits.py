"""The API's rate limits answer 429 with Retry-After before any database work."""

from __future__ import annotations

import time
from typing import Any

import httpx
import psycopg

from outbox_worker import api_keys
from outbox_worker.api import create_app
from outbox_worker.settings import Settings
from tests.live_server import serve

HOOKS = "/api/vendor/webhooks"


def test_a_key_past_its_rate_gets_429_and_other_keys_go_on(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    busy, quiet = api_keys.create_api_key(conn, "v").key, api_keys.create_api_key(conn, "w").key
    app = create_app(Settings(database_url=database_url, api_rate_per_key=2, api_rate_per_ip=0))
    with serve(app) as base, httpx.Client(base_url=base, timeout=10) as client:
        answers = [client.get(HOOKS, headers={"X-Api-Key": busy}) for _ in range(6)]
        other = client.get(HOOKS, headers={"X-Api-Key": quiet})
    assert [r.status_code for r in answers[:4]] == [200] * 4  # a burst of twice the rate
    limited = answers[-1]
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json() == {"code": "rate_limited", "message": "too many requests: retry after 1 s"}
    assert other.status_code == 200


def test_an_address_past_its_rate_gets_429_without_a_database_connection() -> None:
    # Nothing listens on port 1: every request that reached for the database
    # would wait out the pool's timeout and answer 503.
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/none", api_rate_per_ip=1)
    app = create_app(settings, pool_timeout=0.3)
    with serve(app) as base, httpx.Client(base_url=base, timeout=10) as client:
        first = [client.get(HOOKS, headers={"X-Api-Key": f"brut_{i:064x}"}) for i in range(2)]
        started = time.monotonic()
        refused = client.get(HOOKS, headers={"X-Api-Key": "brut_" + "f" * 64})
        took = time.monotonic() - started
    assert [r.status_code for r in first] == [503, 503]
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert took < 0.3  # no pool wait: refused before any database work
