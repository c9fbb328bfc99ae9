"""The special-purpose ranges: one table, read by the worker and generated into the SQL."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from outbox_worker.ranges import RANGES, range_of, sql_function

ROOT = Path(__file__).resolve().parents[2]


def test_the_sql_holds_the_function_generated_from_the_table() -> None:
    generated = sql_function()
    assert generated in (ROOT / "sql" / "schema.sql").read_text(), "run python -m outbox_worker.ranges"
    migrations = [p.read_text() for p in sorted((ROOT / "sql" / "migrations").glob("*.up.sql"))]
    assert any(generated in text for text in migrations), "a migration must create what schema.sql holds"


def test_each_range_is_listed_once_and_is_its_own_most_specific_match() -> None:
    networks = [r.network for r in RANGES]
    assert len(set(networks)) == len(networks)
    for entry in RANGES:
        assert range_of(entry.network.network_address) == entry or any(
            other.network.prefixlen > entry.network.prefixlen
            and entry.network.network_address in other.network
            for other in RANGES
        )


def test_an_address_outside_every_range_is_global() -> None:
    assert range_of(ipaddress.ip_address("8.8.8.8")) is None
    entry = range_of(ipaddress.ip_address("2606:4700::1111"))
    assert entry is not None and entry.kind == "global"
