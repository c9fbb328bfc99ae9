"""Management commands: webhooks, event types, emit, redeliver, API keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from outbox_worker import api_keys, db, webhooks
from outbox_worker.cli.base import Context, handle_errors, main, output, output_record, pass_ctx
from outbox_worker.emit import emit as emit_event


def _webhook_row(w: webhooks.Webhook) -> dict[str, Any]:
    return {
        "id": str(w.id),
        "owner": w.owner_id,
        "url": w.url,
        "events": w.events,
        "enabled": w.enabled,
        "disabled_reason": w.disabled_reason,
        "rate_limit": None if w.rate_limit is None else float(w.rate_limit),
        "headers": w.header_names,  # names only: the values are never shown again
        "created_at": w.created_at.isoformat(timespec="seconds"),
    }


def _headers(values: tuple[str, ...]) -> dict[str, str] | None:
    """``--header 'Name: value'`` options as a mapping; None when there are none."""
    if not values:
        return None
    headers: dict[str, str] = {}
    for given in values:
        name, colon, value = given.partition(":")
        # Never echo what was given: the value is a credential.
        if not colon or not name.strip():
            raise click.BadParameter(
                "use 'Name: value', e.g. 'Authorization: Bearer ...'", param_hint="--header"
            )
        if name.strip().lower() in (n.lower() for n in headers):
            raise click.BadParameter(f"{name.strip()} is given twice", param_hint="--header")
        headers[name.strip()] = value.strip()
    return headers


_header_option = click.option(
    "--header",
    "header",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Sent with every request, e.g. 'Authorization: Bearer ...'; repeat. Never shown again.",
)
_rate_limit_option = click.option(
    "--rate-limit", type=float, help="Most requests per second to this webhook, over all workers."
)


@main.group("webhooks")
def webhooks_group() -> None:
    """Create, list, update, delete, test webhooks and rotate their secrets."""


@webhooks_group.command("create")
@click.option("--owner", required=True, help="Owner (vendor, brand, tenant) id.")
@click.option("--url", required=True, help="Receiver URL (https).")
@click.option("--event", "events", multiple=True, required=True, help="Event type or pattern; repeat.")
@_header_option
@_rate_limit_option
@pass_ctx
@handle_errors
def webhooks_create(
    ctx: Context,
    owner: str,
    url: str,
    events: tuple[str, ...],
    header: tuple[str, ...],
    rate_limit: float | None,
) -> None:
    """Register a webhook and print its secret (shown this once)."""
    headers = _headers(header)
    with ctx.connection() as conn:
        created = webhooks.create_webhook(
            conn, owner, url, events, box=ctx.box, rate_limit=rate_limit, headers=headers
        )
        hook = webhooks.get_webhook(conn, owner, created.id)
    output_record(
        ctx, {**_webhook_row(hook), "secret": created.secret}, "Webhook created: store the secret now"
    )


@webhooks_group.command("list")
@click.option("--owner", default=None, help="Only this owner's webhooks (default: every owner's).")
@click.option("--event", default=None, help="Only webhooks this event type reaches.")
@pass_ctx
@handle_errors
def webhooks_list(ctx: Context, owner: str | None, event: str | None) -> None:
    """List webhooks, an owner's or every owner's (never their secrets)."""
    with ctx.connection() as conn:
        if owner is None:
            hooks = webhooks.list_all_webhooks(conn, event)
        else:
            hooks = webhooks.list_webhooks(conn, owner, event)
    output(ctx, [_webhook_row(w) for w in hooks], f"Webhooks of {owner}" if owner else "Webhooks")


@webhooks_group.command("update")
@click.argument("webhook_id")
@click.option("--owner", required=True)
@click.option("--url", default=None)
@click.option("--event", "events", multiple=True, help="Replaces the subscription; repeat.")
@click.option("--enable/--disable", "enabled", default=None)
@_header_option
@click.option("--no-headers", is_flag=True, help="Remove the webhook's headers.")
@_rate_limit_option
@pass_ctx
@handle_errors
def webhooks_update(
    ctx: Context,
    webhook_id: str,
    owner: str,
    url: str | None,
    events: tuple[str, ...],
    enabled: bool | None,
    header: tuple[str, ...],
    no_headers: bool,
    rate_limit: float | None,
) -> None:
    """Change a webhook's URL, events, status, headers (--header replaces them
    all) or rate limit (0 removes it)."""
    if header and no_headers:
        raise click.UsageError("--header and --no-headers exclude each other")
    headers = {} if no_headers else _headers(header)
    with ctx.connection() as conn:
        hook = webhooks.update_webhook(
            conn, owner, webhook_id, url=url, events=list(events) or None, enabled=enabled,
            rate_limit=rate_limit, headers=headers, box=ctx.box,
        )  # fmt: skip
    output_record(ctx, _webhook_row(hook), "Webhook updated")


def _on_one_webhook(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """Declare ``webhooks NAME WEBHOOK_ID --owner OWNER``."""

    def declare(func: Callable[..., None]) -> click.Command:
        func = pass_ctx(handle_errors(func))
        return webhooks_group.command(name)(
            click.argument("webhook_id")(click.option("--owner", required=True)(func))
        )

    return declare


@_on_one_webhook("delete")
def webhooks_delete(ctx: Context, webhook_id: str, owner: str) -> None:
    """Delete a webhook with all its deliveries and attempt logs."""
    with ctx.connection() as conn:
        webhooks.delete_webhook(conn, owner, webhook_id)
    click.echo(f"deleted webhook {webhook_id}")


@webhooks_group.command("expire-previous-secret")
@click.argument("webhook_id")
@click.option("--owner", required=True)
@pass_ctx
@handle_errors
def webhooks_expire_previous(ctx: Context, webhook_id: str, owner: str) -> None:
    """End a rotation's overlap now: the previous secret stops signing (after a leak)."""
    with ctx.connection() as conn:
        webhooks.expire_previous_secret(conn, owner, webhook_id)
    click.echo(f"webhook {webhook_id} is signed with its current secret only")


@_on_one_webhook("test")
def webhooks_test(ctx: Context, webhook_id: str, owner: str) -> None:
    """Send one signed webhook.test event to this webhook alone; prints the delivery id."""
    with ctx.connection() as conn:
        delivery_id = webhooks.send_test_event(conn, owner, webhook_id)
    output(ctx, [{"delivery_id": delivery_id, "webhook": webhook_id, "event_type": "webhook.test"}])


@_on_one_webhook("rotate-secret")
def webhooks_rotate(ctx: Context, webhook_id: str, owner: str) -> None:
    """Issue a new secret; the old one keeps signing for the overlap window."""
    with ctx.connection() as conn:
        rotated = webhooks.rotate_webhook_secret(conn, owner, webhook_id, box=ctx.box)
    output_record(ctx, {"id": str(rotated.id), "secret": rotated.secret}, "New secret: store it now")


# -- the worker ---------------------------------------------------------------


def _one_owner_choice(owner: str | None, any_owner: bool) -> None:
    """An owner, or the explicit ``--any-owner`` of operators: exactly one."""
    if bool(owner) == any_owner:
        raise click.UsageError("give --owner OWNER, or --any-owner to act across owners (operators)")


@main.command("redeliver")
@click.argument("delivery_ids", nargs=-1, type=int)
@click.option("--webhook", "webhook_id", help="Replay this webhook's failed deliveries instead.")
@click.option("--owner", help="Owner of the deliveries or of --webhook.")
@click.option("--any-owner", is_flag=True, help="Operators: the deliveries may be any owner's (not --owner).")
@click.option("--since", type=click.DateTime(), help="With --webhook: failed at or after this time (UTC).")
@pass_ctx
@handle_errors
def redeliver_cmd(
    ctx: Context,
    delivery_ids: tuple[int, ...],
    webhook_id: str | None,
    owner: str | None,
    any_owner: bool,
    since: datetime | None,
) -> None:
    """Send deliveries again (same webhook-id), or replay a webhook's failures."""
    _one_owner_choice(owner, any_owner)
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
            if owner:
                webhooks.redeliver(conn, delivery_id, owner)
            else:
                webhooks.redeliver_any_owner(conn, delivery_id)
    click.echo(f"re-queued {len(delivery_ids)} deliveries")


@main.command("emit")
@click.option("--owner", required=True)
@click.option("--type", "event_type", required=True, help="Event type, e.g. order.created.")
@click.option("--data", required=True, help="JSON object payload.")
@click.option("--ordering-key", help="Events with the same key reach each webhook in order.")
@click.option("--idempotency-key", help="A second emit with this key returns the first event's id.")
@click.option("--traceparent", help="W3C trace context the deliveries join (docs/tracing.md).")
@pass_ctx
@handle_errors
def emit_cmd(
    ctx: Context,
    owner: str,
    event_type: str,
    data: str,
    ordering_key: str | None,
    idempotency_key: str | None,
    traceparent: str | None,
) -> None:
    """Emit one event (in its own transaction)."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from exc
    with ctx.connection() as conn:
        event_id = emit_event(
            conn, owner, event_type, payload, ordering_key=ordering_key, idempotency_key=idempotency_key,
            traceparent=traceparent,
        )  # fmt: skip
    output_record(ctx, {"event_id": event_id})


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
@click.option("--owner", help="Owner (vendor, brand, tenant) the key acts for.")
@click.option(
    "--operator",
    is_flag=True,
    help="An operator key: the web console (/console) shows it every owner. --owner defaults to 'operator'.",
)
@pass_ctx
@handle_errors
def api_keys_create(ctx: Context, owner: str | None, operator: bool) -> None:
    """Issue a key and print it (shown this once; only its hash is stored)."""
    if owner is None and not operator:
        raise click.UsageError("give --owner OWNER (or --operator for an operator key)")
    owner = owner or "operator"
    with ctx.connection() as conn:
        created = api_keys.create_api_key(conn, owner, ctx.settings.api_key_prefix, operator=operator)
    row = {"id": str(created.id), "owner": owner, "key": created.key, "operator": operator}
    output_record(ctx, row, "API key created: store it now")


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
@click.option("--owner", help="Owner of the key.")
@click.option("--any-owner", is_flag=True, help="Operators: the key may be any owner's (not --owner).")
@pass_ctx
@handle_errors
def api_keys_revoke(ctx: Context, key_id: str, owner: str | None, any_owner: bool) -> None:
    """Revoke a key by its id; requests with it get 401 within a second."""
    _one_owner_choice(owner, any_owner)
    with ctx.connection() as conn:
        if owner:
            revoked = api_keys.revoke_api_key(conn, key_id, owner)
        else:
            revoked = api_keys.revoke_api_key_any_owner(conn, key_id)
    click.echo(f"revoked API key {revoked.id} ({revoked.display_prefix}...) of {revoked.owner_id}")
