"""Configuration, read from ``OUTBOX_*`` environment variables (and ``.env``).

Every field has a default that works on a developer machine; the README's
configuration table is generated from the descriptions below
(``python -m outbox_worker.settings``) so the two cannot drift.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox_worker.databases import Database, check_url, default_name, parse_databases
from outbox_worker.durations import parse_retention


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTBOX_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "postgresql://postgres@localhost:5432/postgres",
        description="libpq URL of the database holding the `outbox` schema.",
    )
    database_urls: list[Any] = Field(
        [],
        description='Several databases instead: JSON list of URLs or `{"name","url","weight"}` '
        "([docs/databases.md](docs/databases.md)).",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto`: console on a TTY, JSON otherwise (containers)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Minimum log level.")

    pooler: Literal["auto", "none", "session", "transaction"] = Field(
        "auto",
        description="`transaction`: no session state (PgBouncer transaction mode; the worker polls). `auto`: "
        "that when a pooler is detected, else `none`/`session`.",
    )

    # Worker: wake-up
    listen: bool = Field(True, description="LISTEN for new events; off = poll only.")
    poll_interval: float = Field(1.0, gt=0, description="Seconds between polls when no notification arrives.")
    quiet_notify: bool = Field(
        True,
        description="While a worker drains, emitters skip NOTIFY (and its commit lock) and it polls "
        "every 1-20 ms; needs `OUTBOX_LISTEN`.",
    )
    prepare_statements: bool = Field(True, description="Let psycopg prepare hot queries.")
    synchronous_commit: bool = Field(
        False,
        description="`false`: the worker's commits skip the WAL flush wait (a crash can only re-send); "
        "`true`: the server's setting.",
    )

    # Worker: capacity
    concurrency: int = Field(256, ge=1, description="Requests in flight per worker process.")
    per_host_concurrency: int = Field(
        32,
        ge=1,
        description="Requests in flight per receiver origin and process; webhooks sharing one take turns.",
    )
    # A quarter: five webhooks of one owner on slow hosts otherwise held
    # every slot for a request timeout (docs/performance.md, owner share).
    owner_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of `OUTBOX_CONCURRENCY` one owner's requests may hold (1 = no cap).",
    )
    batch_size: int = Field(
        200, ge=1, description="Most rows claimed, fanned out or completed per round trip."
    )
    pool_size: int = Field(4, ge=2, description="Database connections per worker process (plus one LISTEN).")
    database_connections: int = Field(
        0,
        ge=0,
        description="With `OUTBOX_DATABASE_URLS`: at most this many connections in all, lent to the "
        "databases in turns (no LISTEN: new events are seen in `pg_stat_database`); "
        "0: a pool and a LISTEN each.",
    )

    # Worker: HTTP
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection to a receiver.")
    request_timeout: float = Field(15.0, gt=0, description="Seconds for a whole attempt, response included.")
    max_response_bytes: int = Field(
        4096, ge=0, description="Response body bytes read and logged per attempt."
    )
    signature_header: str = Field("X-Brutlers-Signature", description="Header carrying the hex HMAC-SHA256.")
    user_agent: str = Field("outbox-worker/0.1", description="User-Agent of webhook requests.")

    # Worker: retries and leases
    retry_schedule: list[float] = Field(
        [5.0, 300.0, 1800.0],
        description="Seconds before each retry (3 entries = 4 attempts), JSON list.",
    )
    retry_jitter: float = Field(
        0.2, ge=0, le=1, description="Random +/- fraction applied to each retry delay."
    )
    lease_seconds: float = Field(
        60.0, gt=0, description="A claimed delivery returns to the queue after this if its worker dies."
    )
    disable_after: float = Field(
        5 * 86400.0, gt=0, description="Seconds of failures without a success before a webhook is disabled."
    )
    shutdown_grace: float = Field(25.0, ge=0, description="Seconds SIGTERM waits for in-flight requests.")
    worker_id: str = Field(
        default_factory=_default_worker_id, description="Name recorded on leases and attempts."
    )

    # History: finished deliveries kept this long, then removed by the workers
    retention: str = Field(
        "30d",
        description="How long the workers keep finished history (deliveries, attempts, events): "
        "`30d`, `12h`, `90min`; `off`: forever.",
    )

    # Secrets at rest
    secret_keys: list[str] = Field(
        [],
        description="Fernet keys (JSON list, newest first) sealing webhook secrets at rest; empty = off.",
    )

    # Network policy at send time: the database's (outbox.config), which these can only tighten
    allow_private_networks: bool = Field(
        True,
        description="`false` refuses loopback/private receivers that `outbox.config` allows.",
    )
    allow_http: bool = Field(
        True,
        description="`false` refuses plain-http receivers that `outbox.config` allows.",
    )

    # Operations: Prometheus metrics and health probes
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Port of `/metrics`, `/healthz` and `/readyz`; 0 disables them."
    )
    metrics_host: str = Field(
        "0.0.0.0",  # noqa: S104 - probes and scrapers come from outside the container
        description="Address the metrics and health server listens on.",
    )
    metrics_interval: float = Field(
        15.0, gt=0, description="Seconds between the queue-depth queries behind the metrics (not per scrape)."
    )
    summary_interval: float = Field(
        60.0,
        ge=0,
        description="Seconds between summary log lines (delivered, retried, failed, lag) while work "
        "flows; 0: none.",
    )

    # Management API
    api_key_prefix: str = Field(
        "brut_",
        description="Prefix of the API keys `outbox-worker api-keys create` issues (sent as `X-Api-Key`).",
    )

    api_rate_per_key: float = Field(
        20.0,
        ge=0,
        description="Requests/s per API key (bursts of 2x, then 429); 0 = off.",
    )
    api_rate_per_ip: float = Field(
        50.0,
        ge=0,
        description="Requests/s per client address, as above (proxies: docs/reference.md).",
    )

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, value: str) -> str:
        # Refused here, naming the variable, rather than as a libpq parse
        # error at the first connection. Never echoed: it may hold a password.
        check_url(value)
        return value

    @field_validator("database_urls")
    @classmethod
    def _database_list(cls, value: list[Any]) -> list[Any]:
        parse_databases(value)  # names unique, every URL a PostgreSQL one
        return value

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        # Refused at start, with what to write, not at the first purge.
        parse_retention(value)
        return value.strip().lower() or "off"

    @field_validator("retry_schedule")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must be >= 0")
        return value

    @model_validator(mode="after")
    def _lease_outlives_a_request(self) -> Settings:
        # A lease shorter than a request would let another replica send the
        # same delivery while the first attempt is still running.
        if self.lease_seconds <= self.request_timeout:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must be longer than "
                f"request_timeout ({self.request_timeout})"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_name_databases(self) -> Settings:
        # Compared with the default, not "was it set": copies re-validated
        # from a dump (run's overrides) set every field.
        default = type(self).model_fields["database_url"].default
        if self.database_urls and self.database_url != default:
            raise ValueError("set OUTBOX_DATABASE_URLS or OUTBOX_DATABASE_URL, not both")
        return self

    @property
    def retention_window(self) -> timedelta | None:
        """``OUTBOX_RETENTION`` as a duration; None when off."""
        return parse_retention(self.retention)

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule) + 1

    @property
    def databases(self) -> list[Database]:
        """Every database this worker serves (one without OUTBOX_DATABASE_URLS)."""
        if self.database_urls:
            return parse_databases(self.database_urls)
        return [Database(default_name(self.database_url), self.database_url)]

    def for_database(self, database: Database) -> Settings:
        """These settings for ``database`` alone (what a single-database part reads)."""
        if not self.database_urls and database.url == self.database_url:
            return self
        return self.model_copy(update={"database_url": database.url, "database_urls": []})


def settings_table() -> str:
    """The README's configuration table, in Markdown."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "host:pid" if name == "worker_id" else field.default
        if isinstance(default, bool):
            default = str(default).lower()
        lines.append(f"| `OUTBOX_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(settings_table())
