"""The command line's frame: the ``outbox-worker`` group, its context (one
connection per command, in one transaction), output as a table or JSON, and
errors as one line.

Each command opens one connection, runs in one transaction and prints a
table (or JSON with ``--json``). Errors print one line and exit 1; bad usage
exits 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Any, TypeVar

import click
import psycopg

from outbox_worker import db, logs, pooling
from outbox_worker.errors import OutboxError
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings

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
