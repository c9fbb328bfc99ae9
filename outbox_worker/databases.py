"""The outbox databases one worker serves, by name.

``OUTBOX_DATABASE_URLS`` lists them (a JSON list of URLs, or of
``{"name": ..., "url": ..., "weight": ...}``); without it the one database is
``OUTBOX_DATABASE_URL``. A name comes from the URL's database name unless the
list gives one; names are what ``--database``, log lines and the metrics'
``database`` label call a database, so they must be unique.

Imports nothing of the worker: settings validate the list with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_EXPECTED = "expected postgresql://user[:password]@host[:port]/dbname or libpq key=value pairs"


@dataclass(frozen=True, slots=True)
class Database:
    """One outbox database: its name, libpq URL and weight in the shared
    concurrency budget (a database of weight 2 gets twice the slots of one of
    weight 1 while both have work)."""

    name: str
    url: str
    weight: float = 1.0

    def __repr__(self) -> str:  # the URL may hold a password
        return f"Database({self.name!r})"


def libpq_url(url: str) -> str:
    """What psycopg.connect takes, from any of the schemes SQLAlchemy writes."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def check_url(value: str) -> dict[str, Any]:
    """The URL's libpq parameters; ValueError, never echoing the URL (it may
    hold a password), when it is not a PostgreSQL URL."""
    scheme, sep, _ = value.partition("://")
    if sep and scheme.lower() not in POSTGRES_SCHEMES:
        raise ValueError(f"{scheme}:// is not a PostgreSQL URL: {_EXPECTED}")
    try:
        return conninfo_to_dict(libpq_url(value))
    except psycopg.ProgrammingError:
        raise ValueError(f"not a PostgreSQL URL: {_EXPECTED}") from None


def default_name(url: str) -> str:
    """A database's name when none is given: its database name (``dbname``,
    else the user's, as libpq defaults it)."""
    params = check_url(url)
    return str(params.get("dbname") or params.get("user") or "postgres")


def _entry(index: int, item: Any) -> Database:
    where = f"entry {index + 1}"
    if isinstance(item, str):
        name, url, weight = None, item, 1.0
    elif isinstance(item, dict):
        unknown = set(item) - {"name", "url", "weight"}
        if unknown or not isinstance(item.get("url"), str):
            raise ValueError(
                f'{where}: give a URL string or {{"name": ..., "url": ..., "weight": ...}}'
                + (f" (unknown keys: {', '.join(sorted(unknown))})" if unknown else "")
            )
        name, url, weight = item.get("name"), item["url"], item.get("weight", 1.0)
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{where}: name must be a string")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ValueError(f"{where}: weight must be a number above 0")
    else:
        raise ValueError(f'{where}: give a URL string or {{"name": ..., "url": ...}}')
    try:
        derived = default_name(url)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    name = derived if name is None else name
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{where}: name {name!r} must be 1-63 letters, digits, '_', '.' or '-'"
            + ('; give one with {"name": ..., "url": ...}' if name == derived else "")
        )
    return Database(name, url, float(weight))


def parse_databases(items: list[Any]) -> list[Database]:
    """``OUTBOX_DATABASE_URLS``'s entries as databases; ValueError on the
    first bad one, or on two sharing a name."""
    found = [_entry(i, item) for i, item in enumerate(items)]
    seen: dict[str, int] = {}
    for i, database in enumerate(found):
        if database.name in seen:
            raise ValueError(
                f"entries {seen[database.name] + 1} and {i + 1} are both named {database.name!r}: "
                'give each a unique name ({"name": ..., "url": ...})'
            )
        seen[database.name] = i
    return found


def choose(databases: list[Database], name: str | None) -> Database:
    """The database called ``name``, or the only one; ValueError naming them
    all when the choice is missing or unknown."""
    names = ", ".join(d.name for d in databases)
    if name is None:
        if len(databases) == 1:
            return databases[0]
        raise ValueError(f"{len(databases)} databases are configured: choose one with --database ({names})")
    for database in databases:
        if database.name == name:
            return database
    raise ValueError(f"no database named {name!r}: configured are {names}")


def shared_prefixes(prefixes: dict[str, str]) -> str | None:
    """What is wrong when two databases share a webhook-id prefix (a restored
    copy of another, say): receivers would take their events for one another's."""
    owners: dict[str, str] = {}
    for name, prefix in prefixes.items():
        if prefix in owners:
            return (
                f"databases {owners[prefix]} and {name} share the webhook-id prefix {prefix!r}: give one "
                f"its own (outbox-worker --database {name} config set message_id_prefix=<a-z0-9, up to 16>)"
            )
        owners[prefix] = name
    return None
