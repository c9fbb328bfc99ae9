"""Local development: the database's settings (``config``) and a receiver
that shows what arrives (``receive``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from outbox_worker import db
from outbox_worker.cli.base import Context, main, output_record, pass_ctx


@main.group("config")
def config_group() -> None:
    """The database's settings (outbox.config): URL policy, limits, NOTIFY."""


@config_group.command("show")
@pass_ctx
def config_show(ctx: Context) -> None:
    """Print every setting of outbox.config."""
    with ctx.connection() as conn:
        [row] = db.fetch(conn, "show_config", {})
    output_record(ctx, dict(sorted(row["settings"].items())), "outbox.config")


@config_group.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
@pass_ctx
def config_set(ctx: Context, assignments: tuple[str, ...]) -> None:
    """Change settings in one transaction, e.g. for a receiver on this machine:

    outbox-worker config set allow_http=true allow_private_networks=true

    Workers follow the database's URL policy within seconds.
    """
    pairs = []
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{assignment!r}: write NAME=VALUE", param_hint="NAME=VALUE")
        pairs.append((name.strip(), value.strip()))
    stored: dict[str, Any] = {}
    with ctx.connection() as conn:
        for name, value in pairs:
            [row] = db.fetch(conn, "set_config", {"name": name, "value": value})
            stored[name] = row["value"]
    output_record(ctx, stored, "outbox.config changed")


@main.command("receive")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=9000, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0: any free)."
)
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    help="The webhook's secret, to verify signatures; repeat during a rotation.",
)
@click.option(
    "--status",
    type=click.IntRange(100, 599),
    help="Answer this status to every request (default: 200, or 401 when a signature fails).",
)
@pass_ctx
def receive_cmd(ctx: Context, host: str, port: int, secrets: tuple[str, ...], status: int | None) -> None:
    """A receiver for development: prints each request it gets (the event,
    the headers, whether each signature verifies) until Ctrl-C."""
    # Here, not at the top: every other command, `run` included, would load aiohttp's server.
    from outbox_worker import receive

    def show(got: receive.Received) -> None:
        text = json.dumps(got.as_json(), ensure_ascii=False) if ctx.as_json else got.as_text() + "\n"
        click.echo(text)

    def ready(url: str) -> None:
        checking = "verifying signatures" if secrets else "not verifying signatures (no --secret)"
        click.echo(f"receiving on {url}/ (any path), {checking}; Ctrl-C stops", err=True)

    app = receive.make_app(secrets, ctx.settings.signature_header, status, show)
    try:
        asyncio.run(receive.serve(host, port, app, ready))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
