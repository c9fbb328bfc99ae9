"""Finding things: deliveries and events, newest first, a page at a time
(``--before`` the last id of a page gives the next)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from outbox_worker import db
from outbox_worker.cli.base import Context, main, moment, output, pass_ctx

F = TypeVar("F", bound=Callable[..., Any])

_SINCE_HELP = "Only those created at or after this: a UTC time (2026-12-01T09:00) or an age (2h, 30min, 7d)."


def _page(ctx: Context, query: str, params: dict[str, Any], title: str) -> None:
    with ctx.connection() as conn:
        rows = db.fetch(conn, query, params)
    output(ctx, rows, title)
    if len(rows) == params["limit"]:
        click.echo(f"more: add --before {rows[-1]['id']}", err=True)


def _since(value: str | None) -> datetime | None:
    return None if value is None else moment(value, "--since", now=datetime.now(UTC))


def _paged(command: F) -> F:
    """The options every list here shares: --since, --before, --limit."""
    for option in reversed(
        [
            click.option("--since", help=_SINCE_HELP),
            click.option("--before", "before_id", type=int, help="Only ids below this (the next page)."),
            click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000)),
        ]
    ):
        command = option(command)
    return command


@main.group("deliveries")
def deliveries_group() -> None:
    """Deliveries (one per event and webhook): find the id to redeliver."""


@deliveries_group.command("list")
@click.option("--owner", help="Only this owner's webhooks.")
@click.option("--webhook", "webhook_id", type=click.UUID, help="Only this webhook.")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), help="Only this state.")
@_paged
@pass_ctx
def deliveries_list(
    ctx: Context,
    owner: str | None,
    webhook_id: uuid.UUID | None,
    status: str | None,
    since: str | None,
    before_id: int | None,
    limit: int,
) -> None:
    """List deliveries, newest first."""
    params = {"owner_id": owner, "webhook_id": webhook_id, "status": status, "since": _since(since),
              "before_id": before_id, "limit": limit}  # fmt: skip
    _page(ctx, "browse_deliveries", params, "Deliveries")


@main.group("events")
def events_group() -> None:
    """Events in the outbox, with their deliveries."""


@events_group.command("list")
@click.option("--owner", help="Only this owner's events.")
@click.option("--type", "event_type", help="Only this event type.")
@_paged
@pass_ctx
def events_list(
    ctx: Context,
    owner: str | None,
    event_type: str | None,
    since: str | None,
    before_id: int | None,
    limit: int,
) -> None:
    """List events, newest first, with how many deliveries each has and their states."""
    params = {"owner_id": owner, "event_type": event_type, "since": _since(since), "before_id": before_id,
              "limit": limit}  # fmt: skip
    _page(ctx, "browse_events", params, "Events")
