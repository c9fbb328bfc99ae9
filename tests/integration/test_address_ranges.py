"""Each special-purpose range, judged the same way by the worker and by the database."""

from __future__ import annotations

import ipaddress
from typing import Any

import psycopg
import pytest

from outbox_worker.netpolicy import refusal
from outbox_worker.ranges import RANGES


def samples() -> list[str]:
    """The first, second and last address of every range of the table."""
    found: list[str] = []
    for entry in RANGES:
        net = entry.network
        found += [str(net.network_address), str(net.broadcast_address)]
        if net.num_addresses > 2:
            found.append(str(net.network_address + 1))
    return found


@pytest.mark.parametrize("allow_private", [False, True], ids=["production", "development"])
def test_every_range_is_judged_alike_in_both_places(
    conn: psycopg.Connection[Any], allow_private: bool
) -> None:
    addresses = samples()
    rows = conn.execute(
        "select a, outbox.address_refusal(cast(a as inet), %s) from unnest(cast(%s as text[])) a",
        (allow_private, addresses),
    ).fetchall()
    in_sql = dict(rows)
    in_python = {a: refusal(ipaddress.ip_address(a), allow_private=allow_private) for a in addresses}
    assert in_sql == in_python


@pytest.mark.parametrize(
    "host",
    [
        # What the security review found the database let through:
        "[::ffff:0:7f00:1]", "[64:ff9b:1::1]", "[5f00::1]",
        "[::7f00:1]", "[fec0::1]", "[3fff::1]", "192.0.2.1",
    ],
)  # fmt: skip
def test_the_database_refuses_what_the_review_found(conn: psycopg.Connection[Any], host: str) -> None:
    for allow_private in (False, True):
        conn.execute("update outbox.config set allow_private_networks = %s", (allow_private,))
        with pytest.raises(psycopg.Error, match="never allowed|loopback or private") as refused:
            conn.execute("select outbox.check_url(%s)", (f"https://{host}/hook",))
        assert refused.value.sqlstate == "OW003"


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/", "https://[fe80::1]/", "https://[::ffff:169.254.169.254]/",
        "https://[fd00:ec2::254]/", "https://metadata.google.internal/", "https://metadata/",
    ],
)  # fmt: skip
def test_metadata_and_link_local_stay_refused_in_development(conn: psycopg.Connection[Any], url: str) -> None:
    conn.execute("update outbox.config set allow_http = true, allow_private_networks = true")
    with pytest.raises(psycopg.Error, match="link-local or cloud metadata, never allowed"):
        conn.execute("select outbox.check_url(%s)", (url,))
    conn.execute("select outbox.check_url('http://127.0.0.1:3000/hook')")  # what development opens
