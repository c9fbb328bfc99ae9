"""The send-time SSRF guard."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from outbox_worker.netpolicy import BlockedTarget, check_url, is_blocked


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::1", "ff02::1",
    ],
)  # fmt: skip
def test_blocked_addresses(address: str) -> None:
    assert is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert not is_blocked(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/", "scheme 'http'"),
        ("ftp://example.com/", "scheme 'ftp'"),
        ("https://u:p@example.com/", "credentials"),
        ("https://127.0.0.1/", "127.0.0.1 is a loopback"),
        ("https://[::ffff:169.254.169.254]/", "private"),
    ],
)
def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(BlockedTarget, match=message):
        check_url(URL(url), allow_http=False, allow_private=False)


def test_check_url_allows_for_development() -> None:
    check_url(URL("http://127.0.0.1:8000/hook"), allow_http=True, allow_private=True)
    check_url(URL("https://example.com/hook"), allow_http=False, allow_private=False)
