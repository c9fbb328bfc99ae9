"""Operating commands: migrate, run, stats, purge, grant, secrets, demo, api."""

from __future__ import annotations

import signal
import sys
from datetime import UTC, datetime
from typing import Any

import click
import psycopg

from outbox_worker import db, fleet, grants, pooling, webhooks
from outbox_worker.cli.base import (
    Context,
    handle_errors,
    main,
    one_line,
    output,
    output_record,
    parse_age,
    pass_ctx,
)
from outbox_worker.databases import Database, shared_prefixes
from outbox_worker.maintenance import sealed_params
from outbox_worker.secretbox import generate_key, new_secret
from outbox_worker.settings import Settings
from outbox_worker.worker import run_forever


@main.command("migrate")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.option("--downgrade", is_flag=True, help="Downgrade to --revision (default base) instead.")
@pass_ctx
def migrate_cmd(ctx: Context, revision: str, downgrade: bool) -> None:
    """Create or upgrade the `outbox` schema (alembic), in every database."""
    from outbox_worker import migrate  # alembic and SQLAlchemy: only this command needs them

    several = len(ctx.settings.databases) > 1
    prefixes: dict[str, str] = {}
    for database in ctx.targets():
        url = db.libpq_url(database.url)
        where = f"{database.name}: " if several else ""
        try:
            if downgrade:
                migrate.downgrade(url, "base" if revision == "head" else revision, pooler=ctx.settings.pooler)
            else:
                migrate.upgrade(url, revision, pooler=ctx.settings.pooler)
                if several and revision == "head":
                    # Beside other databases, webhook-ids need this one's prefix.
                    prefixes[database.name] = migrate.ensure_message_id_prefix(url)
        except Exception as exc:  # alembic and drivers raise many types; the user needs one line
            raise click.ClickException(f"{where}migration failed: {one_line(exc)}") from exc
        click.echo(f"{where}outbox schema at revision {migrate.current_revision(url) or 'base (none)'}")
    if shared := shared_prefixes(prefixes):
        raise click.ClickException(shared)


# -- webhooks -----------------------------------------------------------------


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
    several = len(ctx.targets()) > 1
    if not several and ctx.database is not None:
        settings = settings.for_database(ctx.target())  # --database: that one alone
    sys.exit(run_forever(settings, fleet.serve if several else None))


def _webhook_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
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


@main.command("stats")
@pass_ctx
def stats_cmd(ctx: Context) -> None:
    """Queue health: per webhook, and events waiting for fan-out; with several
    databases, a row per database and their total (--database: one's webhooks)."""
    targets = ctx.targets()
    if len(targets) > 1:
        _stats_per_database(ctx, targets)
        return
    with ctx.connection(targets[0]) as conn:
        rows = db.fetch(conn, "queue_stats", {})
        backlog = db.fetch(conn, "event_backlog", {})[0]
    table = _webhook_rows(rows)
    if ctx.as_json:
        output(ctx, [{"webhooks": table, "undispatched_events": backlog["undispatched"]}])
        return
    output(ctx, table, "Queue health")
    age = backlog["oldest_undispatched_seconds"]
    click.echo(
        f"undispatched events: {backlog['undispatched']}" + (f" (oldest {float(age):.1f} s)" if age else ""),
        err=not sys.stdout.isatty(),  # piped: stdout holds the table alone
    )


def _stats_per_database(ctx: Context, targets: list[Database]) -> None:
    """One row per database, a total, and a line per database that did not
    answer (exit 1 then, after the rows of those that did)."""
    table: list[dict[str, Any]] = []
    failed: list[str] = []
    for database in targets:
        try:
            with ctx.connection(database) as conn:
                [row] = db.fetch(conn, "database_stats", {})
        except click.ClickException as exc:
            failed.append(exc.format_message())
            row = {}
        except psycopg.Error as exc:
            failed.append(f"{database.name}: {one_line(db.translate(exc))}")
            row = {}
        table.append(_database_row(database.name, row))
    counted = [r for r in table if r["error"] is None]
    total = {key: sum(r[key] for r in counted) for key in _COUNTS}
    oldest = [r["oldest_pending_s"] for r in counted if r["oldest_pending_s"] is not None]
    table.append(
        {"database": "total", **total, "oldest_pending_s": max(oldest, default=None),
         "error": f"{len(failed)} not answering" if failed else None}
    )  # fmt: skip
    output(ctx, table, "Queue health per database")
    if failed:
        raise click.ClickException("; ".join(failed))


_COUNTS = ("webhooks", "pending", "retrying", "in_flight", "failed", "undispatched")


def _database_row(name: str, row: dict[str, Any]) -> dict[str, Any]:
    if not row:
        return {"database": name, **dict.fromkeys(_COUNTS, 0), "oldest_pending_s": None, "error": "no answer"}
    age = row["oldest_pending_seconds"]
    return {
        "database": name,
        **{key: int(row[key]) for key in _COUNTS},
        "oldest_pending_s": None if age is None else round(float(age), 1),
        "error": None,
    }


@main.command("purge")
@click.option(
    "--older-than",
    required=True,
    help="Age in d, h, min or s (30d, 12h, 90min): finished history older goes.",
)
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1))
@click.option("--dry-run", is_flag=True, help="Print what would go, delete nothing.")
@pass_ctx
def purge_cmd(ctx: Context, older_than: str, batch_size: int, dry_run: bool) -> None:
    """Delete finished events with their deliveries and attempts, in batches,
    and idempotency keys past outbox.config.idempotency_window (in every database)."""
    cutoff = datetime.now(UTC) - parse_age(older_than, "--older-than")
    several = len(ctx.settings.databases) > 1
    for database in ctx.targets():
        where = f"{database.name}: " if several else ""
        if dry_run:
            _purge_preview(ctx, database, cutoff, where)
        else:
            _purge(ctx, database, cutoff, batch_size, where)


def _purge_preview(ctx: Context, database: Database, cutoff: datetime, where: str) -> None:
    with ctx.connection(database) as conn:
        [row] = db.fetch(conn, "purge_preview", {"older_than": cutoff})
    if ctx.as_json:
        extra = {"database": database.name} if where else {}
        output_record(ctx, {**extra, **row, "older_than": cutoff, "dry_run": True})
        return
    click.echo(
        f"{where}would purge {row['events']} events "
        f"({row['deliveries']} deliveries, {row['attempts']} attempts) "
        f"created before {cutoff.isoformat(timespec='seconds')}"
        + (f", the oldest at {row['oldest'].isoformat(timespec='seconds')}" if row["oldest"] else "")
        + "; nothing deleted (--dry-run)"
    )


def _purge(ctx: Context, database: Database, cutoff: datetime, batch_size: int, where: str) -> None:
    events = keys = last_id = 0
    scan_before: datetime | None = cutoff
    while True:
        # One short transaction per batch: no long locks, vacuum keeps up.
        with ctx.connection(database) as conn:
            batch = db.fetch(
                conn, "purge", {"older_than": scan_before, "after_id": last_id, "limit": batch_size}
            )[0]
        events += batch["events"]
        keys += batch["keys"]
        last_id = batch["last_id"]
        if batch["done"]:
            scan_before = None  # past the cutoff: only expired keys may be left
        if scan_before is None and batch["keys"] < batch_size:
            break
    click.echo(
        f"{where}purged {events} events (with their deliveries and attempts) older than {cutoff.isoformat()}"
        f" and {keys} expired idempotency keys"
    )


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
            values = pooling.session_settings(ctx.settings_for())
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


@secrets_group.command("new")
@pass_ctx
def secrets_new(ctx: Context) -> None:
    """Print a new webhook secret and its sealed form, to pass as `sealed_secret`
    to outbox.create_webhook or rotate_webhook_secret from SQL (the database
    then never sees the plaintext)."""
    if ctx.box is None:
        raise click.UsageError("set OUTBOX_SECRET_KEYS first")
    plain = new_secret()
    output(ctx, [{"secret": plain, "sealed_secret": ctx.box.seal(plain)}], "New secret: store it now")


@secrets_group.command("rotate-all")
@click.option(
    "--expire-previous",
    is_flag=True,
    help="The old secrets stop signing at once (after a leak) instead of after the overlap.",
)
@pass_ctx
@handle_errors
def secrets_rotate_all(ctx: Context, expire_previous: bool) -> None:
    """Give every webhook a new secret and print them all (shown this once):
    after a leak of secrets, or of an encryption key with a backup."""
    rotated: list[dict[str, Any]] = []
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        with ctx.connection() as conn:  # one transaction per page: no long locks
            page = db.fetch(conn, "webhook_owners", {"after": after, "limit": 500})
            for hook in page:
                new = webhooks.rotate_webhook_secret(conn, hook["owner_id"], hook["id"], box=ctx.box)
                if expire_previous:
                    webhooks.expire_previous_secret(conn, hook["owner_id"], hook["id"])
                rotated.append({"id": str(new.id), "owner": hook["owner_id"], "secret": new.secret})
        if len(page) < 500:
            break
        after = str(page[-1]["id"])
    output(ctx, rotated or [{"webhooks": "none"}], "New secrets: hand each to its owner now")


@secrets_group.command("reseal")
@pass_ctx
def secrets_reseal(ctx: Context) -> None:
    """Seal every secret and header value under the newest key (after adding a
    key, before dropping the old one). The secrets stay the same: the old key
    with an old backup still opens them; `secrets rotate-all` changes them."""
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
            # soft_wrap: a command or URL to copy is never broken over lines.
            demo.run(
                server_url=server_url,
                keep=keep,
                orders=orders,
                console=Console(soft_wrap=True),
                as_json=ctx.as_json,
            )
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
    uvicorn.run(create_app(ctx.settings_for()), host=host, port=port, log_level=ctx.settings.log_level)
