"""The product's SQL, loaded by name from the ``sql/`` directory.

Every statement the Python code runs is in ``sql/queries.sql`` under a
``-- name: description`` header, so a DBA can review the whole workload in one
file. Parameters use psycopg's ``%(name)s`` style; :func:`as_sqlalchemy`
rewrites them for ``sqlalchemy.text``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*):[^\n]*$", re.MULTILINE)
_PYFORMAT = re.compile(r"%\((\w+)\)[sb]")


def _locate(installed: str, source: str) -> Path:
    # A wheel carries the directory inside the package; a source checkout
    # (editable install, CI) has it at the repository root.
    for candidate in (_PACKAGE / installed, _PACKAGE.parent / source):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"outbox_worker: cannot find the {source}/ directory")


def sql_dir() -> Path:
    return _locate("_sql", "sql")


def migrations_dir() -> Path:
    return _locate("_migrations", "migrations")


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: statement}`` by its headers."""
    headers = list(_HEADER.finditer(text))
    queries: dict[str, str] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(text)
        name = header.group(1)
        if name in queries:
            raise ValueError(f"duplicate query name {name!r} in queries.sql")
        queries[name] = text[header.end() : end].strip().rstrip(";")
    return queries


@functools.cache
def queries() -> Mapping[str, str]:
    return parse_queries((sql_dir() / "queries.sql").read_text(encoding="utf-8"))


def query(name: str) -> str:
    return queries()[name]


@functools.cache
def as_sqlalchemy(name: str) -> str:
    """The named query with ``:name`` binds, for ``sqlalchemy.text``."""
    return _PYFORMAT.sub(r":\1", query(name)).replace("%%", "%")


def migration_sql(filename: str) -> str:
    return (sql_dir() / "migrations" / filename).read_text(encoding="utf-8")
