"""The command line's frame: the ``outbox-worker`` group, its context (one
connection per command, in one transaction), output, and errors as one line.

Each command opens one connection, runs in one transaction and prints plain
lines (tab-separated when stdout is not a terminal, aligned when it is;
never a value cut or wrapped), or JSON with ``--json``, which every command
also takes after its name. Errors print one line (JSON with ``--json``) and
exit 1; bad usage exits 2. No traceback reaches the user.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
import psycopg
import pydantic
from pydantic_settings import SettingsError

from outbox_worker import db, logs, pooling
from outbox_worker.databases import Database, choose
from outbox_worker.durations import DurationError, parse_duration
from outbox_worker.errors import OutboxError
from outbox_worker.secretbox import SecretBox
from outbox_worker.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    def __init__(self, settings: Settings, as_json: bool, database: str | None = None) -> None:
        self.settings = settings
        self.as_json = as_json
        self.database = database  # --database: the one a command acts on
        self.box = SecretBox.from_keys(settings.secret_keys)
        self.policy = pooling.Policy(settings.pooler, logs.get_logger(), "cli")

    def target(self) -> Database:
        """The one database a management command acts on (``--database``,
        required when several are configured)."""
        try:
            return choose(self.settings.databases, self.database)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

    def targets(self) -> list[Database]:
        """The databases ``run``, ``stats``, ``migrate`` and ``purge`` act on:
        every one configured, or the one ``--database`` names."""
        return [self.target()] if self.database is not None else self.settings.databases

    def settings_for(self, database: Database | None = None) -> Settings:
        return self.settings.for_database(database or self.target())

    @contextmanager
    def connection(self, database: Database | None = None) -> Iterator[psycopg.Connection[Any]]:
        target = database or self.target()
        try:
            conn = db.connect(db.libpq_url(target.url))
            self.policy.check_sync(conn)  # through a transaction-mode pooler: nothing prepared
        except psycopg.OperationalError as exc:
            where = f" {target.name}" if len(self.settings.databases) > 1 else ""
            raise click.ClickException(f"cannot connect to the database{where}: {one_line(exc)}") from exc
        with conn:  # commits on success, rolls back on error
            yield conn


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (libpq's span several)."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


# -- ages and times -----------------------------------------------------------


def parse_age(text: str, param_hint: str) -> timedelta:
    """An age in days, hours, minutes or seconds (``30d``, ``12h``, ``90min``,
    ``45s``; see :func:`~outbox_worker.durations.parse_duration`)."""
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None


def moment(text: str, param_hint: str, now: datetime) -> datetime:
    """A point in time: ISO-8601 (UTC unless it says otherwise) or an age before ``now``."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return now - parse_age(text, param_hint)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- output -------------------------------------------------------------------


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


def _text(value: Any, *, terminal: bool) -> str:
    if value is None:
        return "-" if terminal else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v, terminal=terminal) for v in value)
    if isinstance(value, datetime):
        return value.isoformat()
    # One value, one cell: a tab or line break would split it.
    return " ".join(str(value).split()) if any(c in str(value) for c in "\t\r\n") else str(value)


def _terminal() -> bool:
    return sys.stdout.isatty()


def _columns(lines: list[list[str]], terminal: bool) -> list[str]:
    if not terminal:
        return ["\t".join(cells) for cells in lines]
    widths = [max(len(cells[i]) for cells in lines) for i in range(len(lines[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() for cells in lines]


def output(ctx: Context, rows: Sequence[dict[str, Any]], title: str | None = None) -> None:
    """A list: a header and one line per row (JSON: a list of objects)."""
    if ctx.as_json:
        click.echo(json.dumps(_jsonable(list(rows)), ensure_ascii=False, indent=2))
        return
    terminal = _terminal()
    if terminal and title:
        click.secho(title, bold=True)
    if not rows:
        if terminal:
            click.echo("(none)")
        return
    header = [str(k) for k in rows[0]]
    lines = [header, *([_text(v, terminal=terminal) for v in row.values()] for row in rows)]
    rendered = _columns(lines, terminal)
    if terminal:
        click.secho(rendered[0], bold=True)
    else:
        click.echo(rendered[0])
    for line in rendered[1:]:
        click.echo(line)


def output_record(ctx: Context, row: dict[str, Any], title: str | None = None) -> None:
    """One object: a line per field (JSON: a list holding the object)."""
    if ctx.as_json:
        click.echo(json.dumps(_jsonable([row]), ensure_ascii=False, indent=2))
        return
    terminal = _terminal()
    if terminal and title:
        click.secho(title, bold=True)
    for line in _columns([[str(k), _text(v, terminal=terminal)] for k, v in row.items()], terminal):
        click.echo(line)


# -- errors -------------------------------------------------------------------


def handle_errors(func: F) -> F:
    """Kept for commands that still carry it; the group turns errors into
    one line for every command (see :class:`OutboxGroup`)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OutboxError as exc:
            raise click.ClickException(str(exc)) from exc

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def _settings_error(exc: pydantic.ValidationError) -> str:
    """One line per refused setting, naming its environment variable."""
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        # A rule over several settings names them itself.
        problems.append(f"OUTBOX_{str(error['loc'][0]).upper()}: {message}" if error["loc"] else message)
    return "; ".join(problems)


_SETTINGS_FIELD = re.compile(r'field "(\w+)"')


def _unparsable_setting(exc: SettingsError) -> str:
    """A setting pydantic-settings could not decode (JSON lists, before validation)."""
    found = _SETTINGS_FIELD.search(str(exc))
    name = f"OUTBOX_{found.group(1).upper()}" if found else "a setting"
    return f'{name}: not valid JSON (expected a JSON list, e.g. ["a", "b"])'


def _as_click_error(exc: Exception) -> click.ClickException:
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, SettingsError):
        return click.ClickException(_unparsable_setting(exc))
    mapped = db.translate(exc)  # statements run outside db.fetch: a missing schema, an OW code
    if isinstance(mapped, OutboxError):
        return click.ClickException(str(mapped))
    if isinstance(exc, pydantic.ValidationError):
        return click.ClickException(_settings_error(exc))
    if isinstance(exc, psycopg.OperationalError):
        return click.ClickException(f"the database: {one_line(exc)}")
    if isinstance(exc, psycopg.Error):
        return click.ClickException(f"the database refused: {one_line(exc)}")
    logs.get_logger().debug("command failed", exc_info=exc)
    return click.ClickException(
        f"unexpected error: {type(exc).__name__}: {one_line(exc)} (OUTBOX_LOG_LEVEL=debug shows where)"
    )


def _show(exc: click.ClickException, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"error": exc.format_message(), "exit_code": exc.exit_code}), err=True)
    else:
        exc.show()


def _json_option(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value and (obj := ctx.find_object(Context)) is not None:
        obj.as_json = True


def _database_option(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value is not None and (obj := ctx.find_object(Context)) is not None:
        obj.database = value


def _with_common_options(params: list[click.Parameter]) -> None:
    if not any(p.name == "database" for p in params):
        params.append(
            click.Option(
                ["--database", "database"],
                metavar="NAME",
                expose_value=False,
                callback=_database_option,
                help="The database to act on, by name (OUTBOX_DATABASE_URLS; here or before the command).",
            )
        )
    if not any(p.name == "as_json" for p in params):
        params.append(
            click.Option(
                ["--json", "as_json"],
                is_flag=True,
                expose_value=False,
                callback=_json_option,
                help="Print JSON instead of plain lines (here or before the command).",
            )
        )


class OutboxCommand(click.Command):
    """A command that takes ``--json`` after its name too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _with_common_options(self.params)


class OutboxGroup(click.Group):
    """The group of groups and commands: ``--json`` everywhere, and every
    error, expected or not, as one line."""

    command_class = OutboxCommand
    group_class = type  # subgroups are OutboxGroups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _with_common_options(self.params)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise _as_click_error(exc) from exc

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv  # known before parsing, for errors in parsing too
        extra.pop("standalone_mode", None)
        try:
            code = super().main(argv, prog_name, standalone_mode=False, **extra)
        except click.ClickException as exc:
            _show(exc, as_json)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except (pydantic.ValidationError, SettingsError) as exc:  # settings, read before any command runs
            _show(_as_click_error(exc), as_json)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


pass_ctx = click.make_pass_decorator(Context)


@click.group(cls=OutboxGroup)
@click.option("--database-url", envvar="OUTBOX_DATABASE_URL", help="Overrides OUTBOX_DATABASE_URL.")
@click.option("--database", help="The database to act on, by name (see OUTBOX_DATABASE_URLS).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of plain lines.")
@click.version_option(package_name="outbox-worker")
@click.pass_context
def main(click_ctx: click.Context, database_url: str | None, database: str | None, as_json: bool) -> None:
    """Postgres transactional-outbox webhook worker."""
    settings = Settings(database_url=database_url) if database_url else Settings()
    logs.configure(settings.log_level, settings.log_format)
    click_ctx.obj = Context(settings, as_json, database)
