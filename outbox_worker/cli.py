"""``outbox-worker``: the command line.

Each command opens one connection, runs in one transaction and prints a
table (or JSON with ``--json``). Errors print one line and exit 1; bad usage
exits 2.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
import psycopg

from outbox_worker import api_keys, db, grants, logs, pooling, webhooks
from outbox_worker.emit import emit as emit_event
from outbox_worker.errors import OutboxError
from outbox_worker.maintenance import sealed_params
from outbox_worker.secretbox import SecretBox, generate_key
from outbox_worker.settings import Settings
from outbox_worker.sql import query
from outbox_worker.worker import run_forever

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    def __init__(self, settings: Settings, as_json: bool) -> None:
        self.settings = settings
        self.as_json = as_json
        self.box = SecretBox.from_keys(settings.secret_keys)
        self.policy = pooling.Policy(settings.pooler, logs.get_logger(), "cli")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = db.connect(db.libpq_url(self.settings.database_url))
            self.policy.check_sync(conn)  # through a transaction-mode pooler: nothing prepared
        except psycopg.OperationalError as exc:
            raise click.ClickException(f"cannot connect to the database: {exc}") from exc
        with conn:  # commits on success, rolls back on error
            yield conn


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def output(ctx: Context, rows: Sequence[dict[str, Any]], title: str | None = None) -> None:
    if ctx.as_json:
        click.echo(json.dumps(_jsonable(list(rows)), ensure_ascii=False, indent=2))
        return
    # Imported here, not at the top: `outbox-worker run` never prints a
    # table and rich costs it RSS.
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(rows) == 1:  # one record: vertical, so a secret or URL is never truncated
        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in rows[0].items():
            table.add_row(
                key, "" if value is None else ", ".join(value) if isinstance(value, list) else str(value)
            )
        console.print(table)
        return
    table = Table(title=title)
    for column in rows[0] if rows else ["(none)"]:
        table.add_column(column)
    for row in rows:
        table.add_row(
            *("" if v is None else ", ".join(v) if isinstance(v, list) else str(v) for v in row.values())
        )
    console.print(table)


def _webhook_row(w: webhooks.Webhook) -> dict[str, Any]:
    return {
        "id": str(w.id),
        "owner": w.owner_id,
        "url": w.url,
        "events": w.events,
        "enabled": w.enabled,
        "disabled_reason": w.disabled_reason,
        "created_at": w.created_at.isoformat(timespec="seconds"),
    }


def handle_errors(func: F) -> F:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OutboxError as exc:
            raise click.ClickException(str(exc)) from exc

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option("--database-url", envvar="OUTBOX_DATABASE_URL", help="Overrides OUTBOX_DATABASE_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.version_option(package_name="outbox-worker")
@click.pass_context
def main(click_ctx: click.Context, database_url: str | None, as_json: bool) -> None:
    """Postgres transactional-outbox webhook worker."""
    settings = Settings(database_url=database_url) if database_url else Settings()
    logs.configure(settings.log_level, settings.log_format)
    click_ctx.obj = Context(settings, as_json)


@main.command("migrate")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.option("--downgrade", is_flag=True, help="Downgrade to --revision (default base) instead.")
@pass_ctx
def migrate_cmd(ctx: Context, revision: str, downgrade: bool) -> None:
    """Create or upgrade the `outbox` schema (alembic)."""
    from outbox_worker import migrate  # alembic and SQLAlchemy: only this command needs them

    url = db.libpq_url(ctx.settings.database_url)
    try:
        if downgrade:
            migrate.downgrade(url, "base" if revision == "head" else revision, pooler=ctx.settings.pooler)
        else:
            migrate.upgrade(url, revision, pooler=ctx.settings.pooler)
    except Exception as exc:  # alembic and drivers raise many types; the user needs one line
        raise click.ClickException(f"migration failed: {exc}") from exc
    click.echo(f"outbox schema at revision {migrate.current_revision(url) or 'base (none)'}")


# -- webhooks -----------------------------------------------------------------


@main.group("webhooks")
def webhooks_group() -> None:
    """Create, list, update, delete webhooks and rotate their secrets."""


@webhooks_group.command("create")
@click.option("--owner", required=True, help="Owner (vendor, brand, tenant) id.")
@click.option("--url", required=True, help="Receiver URL (https).")
@click.option("--event", "events", multiple=True, required=True, help="Event type or pattern; repeat.")
@pass_ctx
@handle_errors
def webhooks_create(ctx: Context, owner: str, url: str, events: tuple[str, ...]) -> None:
    """Register a webhook and print its secret (shown this once)."""
    with ctx.connection() as conn:
        created = webhooks.create_webhook(conn, owner, url, events, box=ctx.box)
        hook = webhooks.get_webhook(conn, owner, created.id)
    output(ctx, [{**_webhook_row(hook), "secret": created.secret}], "Webhook created: store the secret now")


@webhooks_group.command("list")
@click.option("--owner", required=True)
@click.option("--event", default=None, help="Only webhooks this event type reaches.")
@pass_ctx
@handle_errors
def webhooks_list(ctx: Context, owner: str, event: str | None) -> None:
    """List an owner's webhooks (never their secrets)."""
    with ctx.connection() as conn:
        hooks = webhooks.list_webhooks(conn, owner, event)
    output(ctx, [_webhook_row(w) for w in hooks], f"Webhooks of {owner}")


@webhooks_group.command("update")
@click.argument("webhook_id")
@click.option("--owner", required=True)
@click.option("--url", default=None)
@click.option("--event", "events", multiple=True, help="Replaces the subscription; repeat.")
@click.option("--enable/--disable", "enabled", default=None)
@pass_ctx
@handle_errors
def webhooks_update(
    ctx: Context, webhook_id: str, owner: str, url: str | None, events: tuple[str, ...], enabled: bool | None
) -> None:
    """Change a webhook's URL, events or status."""
    with ctx.connection() as conn:
        hook = webhooks.update_webhook(
            conn, owner, webhook_id, url=url, events=list(events) or None, enabled=enabled
        )
    output(ctx, [_webhook_row(hook)], "Webhook updated")


@webhooks_group.command("delete")
@click.argument("webhook_id")
@click.option("--owner", required=True)
@pass_ctx
@handle_errors
def webhooks_delete(ctx: Context, webhook_id: str, owner: str) -> None:
    """Delete a webhook with all its deliveries and attempt logs."""
    with ctx.connection() as conn:
        webhooks.delete_webhook(conn, owner, webhook_id)
    click.echo(f"deleted webhook {webhook_id}")


@webhooks_group.command("rotate-secret")
@click.argument("webhook_id")
@click.option("--owner", required=True)
@pass_ctx
@handle_errors
def webhooks_rotate(ctx: Context, webhook_id: str, owner: str) -> None:
    """Issue a new secret; the old one keeps signing for the overlap window."""
    with ctx.connection() as conn:
        rotated = webhooks.rotate_webhook_secret(conn, owner, webhook_id, box=ctx.box)
    output(ctx, [{"id": str(rotated.id), "secret": rotated.secret}], "New secret: store it now")


# -- the worker ---------------------------------------------------------------


@main.command("run")
@click.option("--concurrency", type=int, help="Requests in flight (OUTBOX_CONCURRENCY).")
@click.option("--batch-size", type=int, help="Rows per claim/fan-out/complete (OUTBOX_BATCH_SIZE).")
@click.option("--poll-interval", type=float, help="Seconds between polls (OUTBOX_POLL_INTERVAL).")
@click.option("--no-listen", is_flag=True, help="Poll only (behind transaction-mode PgBouncer).")
@click.option("--worker-id", help="Name on leases and attempts (OUTBOX_WORKER_ID).")
@pass_ctx
def run_cmd(
    ctx: Context,
    concurrency: int | None,
    batch_size: int | None,
    poll_interval: float | None,
    no_listen: bool,
    worker_id: str | None,
) -> None:
    """Deliver webhooks until SIGTERM/SIGINT (then drain and exit 0)."""
    overrides: dict[str, Any] = {
        "concurrency": concurrency,
        "batch_size": batch_size,
        "poll_interval": poll_interval,
        "worker_id": worker_id,
        "listen": False if no_listen else None,
    }
    settings = ctx.settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    settings = Settings.model_validate(settings.model_dump())  # re-validate the overrides
    # Until the event loop installs its handlers, nothing is claimed: a
    # SIGTERM during start-up is a clean exit, not a crash.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(run_forever(settings))


@main.command("redeliver")
@click.argument("delivery_ids", nargs=-1, type=int)
@click.option("--webhook", "webhook_id", help="Replay this webhook's failed deliveries instead.")
@click.option("--owner", help="Owner of --webhook (required with it).")
@click.option("--since", type=click.DateTime(), help="With --webhook: failed at or after this time (UTC).")
@pass_ctx
@handle_errors
def redeliver_cmd(
    ctx: Context,
    delivery_ids: tuple[int, ...],
    webhook_id: str | None,
    owner: str | None,
    since: datetime | None,
) -> None:
    """Send deliveries again (same webhook-id), or replay a webhook's failures."""
    with ctx.connection() as conn:
        if webhook_id:
            if not owner:
                raise click.UsageError("--webhook needs --owner")
            moment = (since or datetime(1970, 1, 1)).replace(tzinfo=UTC)
            count = webhooks.replay_failed(conn, owner, webhook_id, moment)
            click.echo(f"re-queued {count} failed deliveries")
            return
        if not delivery_ids:
            raise click.UsageError("give delivery ids, or --webhook with --owner")
        for delivery_id in delivery_ids:
            webhooks.redeliver(conn, delivery_id)
    click.echo(f"re-queued {len(delivery_ids)} deliveries")


@main.command("stats")
@pass_ctx
def stats_cmd(ctx: Context) -> None:
    """Queue health: per webhook, and events waiting for fan-out."""
    with ctx.connection() as conn:
        rows = db.fetch(conn, "queue_stats", {})
        backlog = db.fetch(conn, "event_backlog", {})[0]
    table = [
        {
            "owner": r["owner_id"],
            "webhook": str(r["webhook_id"]),
            "url": r["url"],
            "enabled": r["enabled"],
            "pending": r["pending"],
            "retrying": r["retrying"],
            "in_flight": r["in_flight"],
            "failed": r["failed"],
            "oldest_pending_s": None
            if r["oldest_pending_seconds"] is None
            else round(float(r["oldest_pending_seconds"]), 1),
        }
        for r in rows
    ]
    if ctx.as_json:
        output(ctx, [{"webhooks": table, "undispatched_events": backlog["undispatched"]}])
        return
    output(ctx, table or [{"webhooks": "none"}], "Queue health")
    age = backlog["oldest_undispatched_seconds"]
    click.echo(
        f"undispatched events: {backlog['undispatched']}" + (f" (oldest {float(age):.1f} s)" if age else "")
    )


@main.command("purge")
@click.option(
    "--older-than", required=True, help="Age like 30d, 12h, 90m: finished history older than this goes."
)
@click.option("--batch-size", default=5000, show_default=True)
@pass_ctx
def purge_cmd(ctx: Context, older_than: str, batch_size: int) -> None:
    """Delete finished events with their deliveries and attempts, in batches."""
    cutoff = datetime.now(UTC) - parse_age(older_than)
    total = 0
    while True:
        # One short transaction per batch: no long locks, vacuum keeps up.
        with ctx.connection() as conn, conn.cursor() as cur:
            cur.execute(query("purge"), {"older_than": cutoff, "limit": batch_size})
            deleted = cur.rowcount
        total += deleted
        if deleted < batch_size:
            break
    click.echo(f"purged {total} events (with their deliveries and attempts) older than {cutoff.isoformat()}")


def parse_age(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        value, unit = float(text[:-1]), text[-1]
        return timedelta(seconds=value * units[unit])
    except (ValueError, KeyError, IndexError):
        raise click.BadParameter(f"{text!r}: use a number and one of s, m, h, d, w (e.g. 30d)") from None


@main.command("grant")
@click.option("--app", "app_role", help="Role that may only emit events.")
@click.option("--worker", "worker_role", help="Role the worker (and management commands) log in as.")
@click.option("--dba", "dba_role", help="Read-only role: logs and stats, never secrets.")
@click.option("--create", is_flag=True, help="Create missing roles (LOGIN, no password: set one after).")
@click.option(
    "--session-settings",
    is_flag=True,
    help="Also store the worker's session settings on the --worker role, for a role that only "
    "`outbox-worker run` logs in as behind a transaction-mode pooler.",
)
@pass_ctx
def grant_cmd(
    ctx: Context,
    app_role: str | None,
    worker_role: str | None,
    dba_role: str | None,
    create: bool,
    session_settings: bool,
) -> None:
    """Grant database roles the privileges of the app, the worker or a DBA."""
    requested: list[tuple[grants.Kind, str | None]] = [
        ("app", app_role),
        ("worker", worker_role),
        ("dba", dba_role),
    ]
    chosen = [(kind, role) for kind, role in requested if role]
    if not chosen:
        raise click.UsageError("name at least one of --app, --worker, --dba")
    if session_settings and not worker_role:
        raise click.UsageError("--session-settings needs --worker")
    with ctx.connection() as conn:
        for kind, role in chosen:
            try:
                grants.grant(conn, kind, role, create=create)
            except psycopg.Error as exc:
                raise click.ClickException(f"granting {kind} privileges to {role}: {exc}".strip()) from exc
            click.echo(f"{role}: {kind} privileges granted")
        if session_settings and worker_role:
            values = pooling.session_settings(ctx.settings)
            try:
                grants.store_session_settings(conn, worker_role, values)
            except psycopg.Error as exc:
                raise click.ClickException(f"session settings of {worker_role}: {exc}".strip()) from exc
            click.echo(f"{worker_role}: " + ", ".join(f"{k} = {v}" for k, v in values.items()))


@main.group("secrets")
def secrets_group() -> None:
    """Webhook secrets at rest (OUTBOX_SECRET_KEYS)."""


@secrets_group.command("generate-key")
def secrets_generate_key() -> None:
    """Print a new key to put first in OUTBOX_SECRET_KEYS."""
    click.echo(generate_key())


@secrets_group.command("reseal")
@pass_ctx
def secrets_reseal(ctx: Context) -> None:
    """Seal every secret under the newest key (after adding a key, before dropping the old one)."""
    if ctx.box is None:
        raise click.UsageError("set OUTBOX_SECRET_KEYS first")
    total = 0
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        with ctx.connection() as conn:
            rows = db.fetch(conn, "all_secrets", {"after": after, "limit": 500})
            if not rows:
                break
            db.fetch(conn, "store_sealed_secrets", sealed_params(rows, ctx.box))
            after = str(rows[-1]["id"])
            total += len(rows)
    click.echo(f"resealed {total} webhook secrets under the newest key")


# -- events -------------------------------------------------------------------


@main.command("emit")
@click.option("--owner", required=True)
@click.option("--type", "event_type", required=True, help="Event type, e.g. order.created.")
@click.option("--data", required=True, help="JSON object payload.")
@pass_ctx
@handle_errors
def emit_cmd(ctx: Context, owner: str, event_type: str, data: str) -> None:
    """Emit one event (in its own transaction)."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from exc
    with ctx.connection() as conn:
        event_id = emit_event(conn, owner, event_type, payload)
    output(ctx, [{"event_id": event_id}])


@main.group("event-types")
def event_types_group() -> None:
    """The catalogue of event types webhooks may subscribe to."""


@event_types_group.command("list")
@pass_ctx
def event_types_list(ctx: Context) -> None:
    """List the event types."""
    with ctx.connection() as conn:
        rows = db.fetch(conn, "list_event_types", {})
    output(ctx, [{"name": r["name"], "description": r["description"]} for r in rows], "Event types")


@event_types_group.command("add")
@click.argument("name")
@click.option("--description", default="")
@pass_ctx
@handle_errors
def event_types_add(ctx: Context, name: str, description: str) -> None:
    """Add an event type (or change its description)."""
    with ctx.connection() as conn:
        webhooks.add_event_type(conn, name, description)
    click.echo(f"event type {name} registered")


# -- the demo -----------------------------------------------------------------


@main.command("demo")
@click.option("--keep", is_flag=True, help="Leave the database (and an embedded server) running afterwards.")
@click.option(
    "--orders", default=10, show_default=True, type=click.IntRange(1, 500), help="Orders the shop places."
)
@click.pass_context
def demo_cmd(click_ctx: click.Context, keep: bool, orders: int) -> None:
    """Zero-setup tour: embedded Postgres (or a throwaway database on
    OUTBOX_DATABASE_URL's server), a shop emitting events, a verifying receiver
    and the worker; exits 0 when every committed event arrived."""
    import asyncio

    from rich.console import Console

    from outbox_worker import demo

    parent = click_ctx.parent
    server_url = parent.params.get("database_url") if parent else None
    ctx: Context = click_ctx.ensure_object(Context)
    try:
        code = asyncio.run(
            demo.run(server_url=server_url, keep=keep, orders=orders, console=Console(), as_json=ctx.as_json)
        )
    except psycopg.Error as exc:
        raise click.ClickException(f"demo: PostgreSQL refused: {str(exc).strip()}") from exc
    sys.exit(code)


# -- management API -----------------------------------------------------------


@main.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@pass_ctx
def api_cmd(ctx: Context, host: str, port: int) -> None:
    """Serve the management HTTP API (OpenAPI document at /openapi.json, docs at /docs)."""
    # Imported here so the worker runs without the `api` extra installed.
    try:
        import uvicorn

        from outbox_worker.api import create_app
    except ImportError as exc:
        raise click.ClickException(f"the API needs: pip install 'outbox-worker[api]' ({exc})") from exc
    uvicorn.run(create_app(ctx.settings), host=host, port=port, log_level=ctx.settings.log_level)


@main.group("api-keys")
def api_keys_group() -> None:
    """Issue, list and revoke the X-Api-Key credentials of the management API."""


def _api_key_row(key: api_keys.ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "owner": key.owner_id,
        "prefix": key.display_prefix,
        "created_at": key.created_at.isoformat(timespec="seconds"),
        "revoked_at": key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else None,
    }


@api_keys_group.command("create")
@click.option("--owner", required=True, help="Owner (vendor, brand, tenant) the key acts for.")
@pass_ctx
@handle_errors
def api_keys_create(ctx: Context, owner: str) -> None:
    """Issue a key and print it (shown this once; only its hash is stored)."""
    with ctx.connection() as conn:
        created = api_keys.create_api_key(conn, owner, ctx.settings.api_key_prefix)
    row = {"id": str(created.id), "owner": owner, "key": created.key}
    output(ctx, [row], "API key created: store it now")


@api_keys_group.command("list")
@click.option("--owner", required=True)
@pass_ctx
@handle_errors
def api_keys_list(ctx: Context, owner: str) -> None:
    """List an owner's keys, revoked ones included (never the keys)."""
    with ctx.connection() as conn:
        keys = api_keys.list_api_keys(conn, owner)
    output(ctx, [_api_key_row(k) for k in keys], f"API keys of {owner}")


@api_keys_group.command("revoke")
@click.argument("key_id")
@pass_ctx
@handle_errors
def api_keys_revoke(ctx: Context, key_id: str) -> None:
    """Revoke a key by its id; requests with it get 401 from now on."""
    with ctx.connection() as conn:
        revoked = api_keys.revoke_api_key(conn, key_id)
    click.echo(f"revoked API key {revoked.id} ({revoked.display_prefix}...) of {revoked.owner_id}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
