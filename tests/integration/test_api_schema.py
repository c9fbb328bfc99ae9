"""Property-based run of schemathesis against the live API and its own OpenAPI document.

Every generated request must get a documented status and a body that
matches the documented schema, and no 5xx; requests that break the schema
must be refused, and requests without a valid key must get 401.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from outbox_worker import api_keys, webhooks
from outbox_worker.api import create_app
from outbox_worker.settings import Settings
from tests.live_server import serve

OWNER = "brand-1"
# Known when the schema is loaded (at import), so schemathesis applies it as
# the ApiKey security scheme and still probes requests without it.
KEY = "brut_" + secrets.token_hex(32)
# Objects that exist, so that generated ids sometimes hit one and the 2xx
# bodies get checked too, not only the 404s of random ids.
WEBHOOK_ID = str(uuid.uuid4())
DELIVERY_ID = 1  # the first delivery after the per-test "restart identity"

CONFIG = schemathesis.Config.from_dict(
    {
        "auth": {"openapi": {"ApiKey": {"api_key": KEY}}},
        "checks": {
            # The rules on URLs and event types are the database's, not the
            # schema's: a schema-valid webhook may rightly be refused (422).
            "positive_data_acceptance": {"enabled": False},
        },
    }
)
# The document is the app's own; the requests go to a live server.
# (The fixture-based loader of schemathesis does not run under pytest 9.)
schema = schemathesis.openapi.from_dict(create_app("postgresql:///document-only").openapi(), config=CONFIG)


def _well_formed(name: str, value: Any) -> bool:
    if name == "webhook_id":
        try:
            return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
        except ValueError:
            return False
    if name == "delivery_id":
        return isinstance(value, int) and 1 <= value < 2**63
    return isinstance(value, str) and value != ""


@schema.hook
def flatmap_path_parameters(
    context: Any, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    # Only a well-formed id is swapped (for another well-formed one): a case
    # generated to break the schema must stay broken.
    if not path_parameters:
        return st.just(path_parameters)
    existing = {"brand_id": OWNER, "webhook_id": WEBHOOK_ID, "delivery_id": DELIVERY_ID}
    return st.fixed_dictionaries(
        {
            name: st.sampled_from([value, existing[name]])
            if name in existing and _well_formed(name, value)
            else st.just(value)
            for name, value in path_parameters.items()
        }
    )


@pytest.fixture(scope="module")
def api_url(migrated_url: str) -> Iterator[str]:
    # No rate limits: hypothesis fires requests at machine speed.
    unlimited = Settings(database_url=migrated_url, api_rate_per_key=0, api_rate_per_ip=0)
    with serve(create_app(unlimited)) as url:
        yield url


@pytest.fixture
def owned_objects(database_url: str) -> None:
    # Fixed ids and key, known before the database exists: set as a DBA
    # would, since the SQL functions only ever make random ones.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into outbox.api_keys (owner_id, key_hash, display_prefix) values (%s, %s, %s)",
            (OWNER, api_keys.key_hash(KEY), KEY[:13]),
        )
        created = webhooks.create_webhook(conn, OWNER, "https://example.com/hook", ["order.created"])
        # An id change is refused (OW011); a superuser can make one
        # on a webhook without deliveries yet, with triggers skipped.
        with conn.transaction():
            conn.execute("set local session_replication_role = replica")
            conn.execute("update outbox.webhooks set id = %s where id = %s", (WEBHOOK_ID, created.id))
        delivery = conn.execute(
            "insert into outbox.deliveries (event_id, webhook_id, status, attempts, completed_at)"
            " values (outbox.emit(%s, 'order.created', '{}'), %s, 'failed', 1, now()) returning id",
            (OWNER, WEBHOOK_ID),
        ).fetchone()
        assert delivery == (DELIVERY_ID,)
        conn.execute(
            "insert into outbox.delivery_attempts (delivery_id, attempt, attempted_at, duration_ms,"
            " status_code, error_class, error, response_body)"
            " values (%s, 1, now(), 3.5, 503, 'http', 'HTTP 503', 'busy')",
            (DELIVERY_ID,),
        )


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_response_is_documented_and_none_is_a_server_error(
    case: Any, api_url: str, owned_objects: None
) -> None:
    case.call_and_validate(base_url=api_url)
