"""Where the worker may send: the send-time half of the SSRF guard.

Registration (SQL) refuses bad schemes and private IP literals, but it
cannot resolve names. At send time the HTTP client (outbox_worker.client)
resolves each name, drops every address :func:`is_blocked` refuses
(loopback, private, link-local and cloud metadata, CGNAT, multicast,
reserved) and connects only to an address it kept, so a DNS answer that
changes between the check and the connect (rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_EXTRA_BLOCKED = [
    ipaddress.ip_network(n)
    for n in ("2002::/16", "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "255.255.255.255/32")
]


class BlockedTarget(OSError):
    """The target resolves only to addresses webhooks may not reach."""


def is_blocked(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_blocked(address.ipv4_mapped)
        if address in _NAT64:
            return is_blocked(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return (
        not address.is_global
        or address.is_multicast
        or address.is_unspecified
        or any(address in net for net in _EXTRA_BLOCKED if net.version == address.version)
    )


def check_url(url: URL, *, allow_http: bool, allow_private: bool) -> None:
    """Raise BlockedTarget for a URL the worker must not request."""
    if url.scheme not in ("https", "http") or (url.scheme == "http" and not allow_http):
        raise BlockedTarget(f"scheme {url.scheme!r} is not allowed")
    if url.user is not None or url.password is not None:
        raise BlockedTarget("credentials in the URL are not allowed")
    if not url.host:
        raise BlockedTarget("URL has no host")
    if allow_private:
        return
    try:
        literal = ipaddress.ip_address(url.host.strip("[]"))
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    if is_blocked(literal):
        raise BlockedTarget(f"{literal} is a loopback, private, link-local or reserved address")
