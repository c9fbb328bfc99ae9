"""The send-time SSRF guard and the URL policy it applies."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from outbox_worker.netpolicy import BlockedTarget, UrlPolicy, check_url, is_blocked


def policy(
    *, database: tuple[bool, bool] | None = (False, False), worker: tuple[bool, bool] = (True, True)
) -> UrlPolicy:
    """A policy with the database's side (allow_http, allow_private_networks) read, unless None."""
    p = UrlPolicy(worker_http=worker[0], worker_private=worker[1])
    if database is not None:
        p.set_database(allow_http=database[0], allow_private=database[1])
    return p


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::1", "ff02::1",
        # What the security review found the worker let through:
        "::7f00:1", "::ffff:0:7f00:1", "64:ff9b:1::1", "fec0::1", "5f00::1", "3fff::1",
    ],
)  # fmt: skip
def test_blocked_addresses(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "192.0.0.9"],
)
def test_public_addresses(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254", "100.100.100.200"]
)
def test_link_local_and_metadata_stay_refused_in_development(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address), allow_private=True)
    with pytest.raises(BlockedTarget, match="never allowed") as refused:
        check_url(
            URL(f"http://[{address}]/" if ":" in address else f"http://{address}/"),
            policy(database=(True, True)),
        )
    assert not refused.value.held


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/", "scheme 'ftp'"),
        ("https://u:p@example.com/", "credentials"),
        ("https://192.0.2.1/", "reserved address: never allowed"),
    ],
)
def test_what_no_setting_allows_is_refused_for_good(url: str, message: str) -> None:
    with pytest.raises(BlockedTarget, match=message) as refused:
        check_url(URL(url), policy(database=(True, True)))
    assert not refused.value.held


def test_the_database_allows_and_the_worker_can_only_tighten() -> None:
    local = URL("http://127.0.0.1:8000/hook")
    check_url(local, policy(database=(True, True)))  # one switch: the database's
    with pytest.raises(BlockedTarget, match=r"outbox.config.allow_http = false") as http:
        check_url(local, policy(database=(False, True)))
    with pytest.raises(BlockedTarget, match=r"outbox.config.allow_private_networks = false") as private:
        check_url(local, policy(database=(True, False)))
    with pytest.raises(BlockedTarget, match=r"OUTBOX_ALLOW_PRIVATE_NETWORKS=false on this worker") as tight:
        check_url(local, policy(database=(True, True), worker=(True, False)))
    assert http.value.held and private.value.held and tight.value.held  # a setting would allow each


def test_until_the_database_is_read_the_policy_is_the_strictest() -> None:
    unread = policy(database=None)
    assert (unread.known, unread.allow_http, unread.allow_private) == (False, False, False)
    changes: list[bool] = []
    unread.on_change(lambda: changes.append(True))
    assert unread.set_database(allow_http=True, allow_private=True)
    assert not unread.set_database(allow_http=True, allow_private=True)
    assert changes == [True]
