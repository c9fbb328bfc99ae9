"""OUTBOX_DATABASE_URLS: names, weights, and one clear line for each bad entry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from outbox_worker.databases import Database, choose, shared_prefixes
from outbox_worker.settings import Settings


def test_names_come_from_the_urls_unless_given() -> None:
    settings = Settings(
        database_urls=[
            "postgresql://u:secret@h1/shop_eu",
            {"name": "us", "url": "postgresql://h2/shop", "weight": 2},
        ]
    )
    assert settings.databases == [
        Database("shop_eu", "postgresql://u:secret@h1/shop_eu"),
        Database("us", "postgresql://h2/shop", 2.0),
    ]
    assert "secret" not in repr(settings.databases)
    assert settings.for_database(settings.databases[1]).database_url == "postgresql://h2/shop"


def test_without_the_list_the_one_database_is_database_url() -> None:
    assert Settings(database_url="postgresql://h/app").databases == [Database("app", "postgresql://h/app")]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["postgresql://h1/app", "postgresql://h2/app"], "entries 1 and 2 are both named 'app'"),
        ([{"url": "mysql://h/app"}], "entry 1: mysql:// is not a PostgreSQL URL"),
        ([42], "entry 1: give a URL string"),
        ([{"name": "a", "url": "postgresql://h/a", "port": 1}], "unknown keys: port"),
        ([{"name": "a b", "url": "postgresql://h/a"}], "name 'a b' must be"),
        ([{"url": "postgresql://h/a", "weight": 0}], "weight must be a number above 0"),
    ],
)
def test_bad_lists_are_refused_in_one_line(entries: list[object], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(database_urls=entries)
    assert "secret" not in str(refused.value)


def test_both_variables_at_once_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        Settings(database_url="postgresql://h/a", database_urls=["postgresql://h/b"])


def test_a_management_command_must_choose_among_several() -> None:
    databases = [Database("a", "postgresql://h/a"), Database("b", "postgresql://h/b")]
    with pytest.raises(ValueError, match=r"choose one with --database \(a, b\)"):
        choose(databases, None)
    with pytest.raises(ValueError, match="no database named 'c': configured are a, b"):
        choose(databases, "c")
    assert choose(databases, "b").name == "b"
    assert choose(databases[:1], None).name == "a"


def test_shared_webhook_id_prefixes_are_named() -> None:
    assert shared_prefixes({"a": "x1", "b": "x2"}) is None
    problem = shared_prefixes({"a": "x1", "b": "x1"})
    assert problem is not None and "databases a and b share the webhook-id prefix 'x1'" in problem
