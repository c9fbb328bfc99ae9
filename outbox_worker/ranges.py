"""Special-purpose address ranges: the one table both URL checks derive from.

The worker's send-time check (:mod:`outbox_worker.netpolicy`) reads
:data:`RANGES` directly; the database's check (``outbox.address_kind`` in
``sql/schema.sql``) is generated from it by ``python -m
outbox_worker.ranges``, and a test keeps the two in step. The entries follow
the IANA IPv4 and IPv6 special-purpose address registries, plus multicast,
the deprecated IPv6 forms and the cloud metadata addresses outside
link-local.

An address takes the kind of the most specific range holding it:

- ``never``: link-local and cloud metadata, refused even in development;
- ``local``: loopback and private networks, allowed only by
  ``outbox.config.allow_private_networks``;
- ``reserved``: anything else not globally reachable, always refused;
- ``global``: a globally reachable block inside a refused one;
- ``embedded``: an IPv6 form carrying an IPv4 address in its last 32 bits,
  judged by that address.

An address in no range is global.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

Kind = Literal["never", "local", "reserved", "global", "embedded"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Range:
    network: Network
    kind: Kind
    name: str


def _r(cidr: str, kind: Kind, name: str) -> Range:
    return Range(ipaddress.ip_network(cidr), kind, name)


RANGES: tuple[Range, ...] = (
    # IANA IPv4 Special-Purpose Address Registry
    _r("0.0.0.0/8", "local", "this network (0.0.0.0 reaches this host)"),
    _r("10.0.0.0/8", "local", "private-use"),
    _r("100.64.0.0/10", "local", "shared address space (CGNAT)"),
    _r("127.0.0.0/8", "local", "loopback"),
    _r("169.254.0.0/16", "never", "link-local (cloud metadata at 169.254.169.254)"),
    _r("172.16.0.0/12", "local", "private-use"),
    _r("192.0.0.0/24", "reserved", "IETF protocol assignments"),
    _r("192.0.0.0/29", "reserved", "IPv4 service continuity prefix"),
    _r("192.0.0.8/32", "reserved", "IPv4 dummy address"),
    _r("192.0.0.9/32", "global", "port control protocol anycast"),
    _r("192.0.0.10/32", "global", "TURN anycast"),
    _r("192.0.0.170/31", "reserved", "NAT64/DNS64 discovery"),
    _r("192.0.2.0/24", "reserved", "documentation (TEST-NET-1)"),
    _r("192.31.196.0/24", "global", "AS112-v4"),
    _r("192.52.193.0/24", "global", "AMT"),
    _r("192.88.99.0/24", "reserved", "deprecated 6to4 relay anycast"),
    _r("192.168.0.0/16", "local", "private-use"),
    _r("192.175.48.0/24", "global", "direct delegation AS112 service"),
    _r("198.18.0.0/15", "reserved", "benchmarking"),
    _r("198.51.100.0/24", "reserved", "documentation (TEST-NET-2)"),
    _r("203.0.113.0/24", "reserved", "documentation (TEST-NET-3)"),
    _r("224.0.0.0/4", "reserved", "multicast"),
    _r("240.0.0.0/4", "reserved", "reserved"),
    _r("255.255.255.255/32", "reserved", "limited broadcast"),
    # Cloud metadata outside link-local
    _r("100.100.100.200/32", "never", "cloud metadata (Alibaba Cloud)"),
    _r("192.0.0.192/32", "never", "cloud metadata (Oracle Cloud, legacy)"),
    # IANA IPv6 Special-Purpose Address Registry
    _r("::1/128", "local", "loopback"),
    _r("::/128", "local", "unspecified (reaches this host)"),
    _r("::ffff:0:0/96", "embedded", "IPv4-mapped"),
    _r("64:ff9b::/96", "embedded", "IPv4/IPv6 translation (NAT64)"),
    _r("64:ff9b:1::/48", "reserved", "IPv4/IPv6 translation, local use"),
    _r("100::/64", "reserved", "discard-only"),
    _r("100:0:0:1::/64", "reserved", "dummy IPv6 prefix"),
    _r("2001::/23", "reserved", "IETF protocol assignments"),
    _r("2001::/32", "reserved", "TEREDO"),
    _r("2001:1::1/128", "global", "port control protocol anycast"),
    _r("2001:1::2/128", "global", "TURN anycast"),
    _r("2001:1::3/128", "global", "DNS-SD service registration protocol anycast"),
    _r("2001:2::/48", "reserved", "benchmarking"),
    _r("2001:3::/32", "global", "AMT"),
    _r("2001:4:112::/48", "global", "AS112-v6"),
    _r("2001:10::/28", "reserved", "deprecated ORCHID"),
    _r("2001:20::/28", "global", "ORCHIDv2"),
    _r("2001:30::/28", "global", "drone remote ID entity tags"),
    _r("2001:db8::/32", "reserved", "documentation"),
    _r("2002::/16", "reserved", "6to4"),
    _r("2620:4f:8000::/48", "global", "direct delegation AS112 service"),
    _r("3fff::/20", "reserved", "documentation"),
    _r("5f00::/16", "reserved", "segment routing (SRv6) SIDs"),
    _r("fc00::/7", "local", "unique-local"),
    _r("fe80::/10", "never", "link-local"),
    # IPv6 forms outside that registry: deprecated, multicast, unassigned
    _r("::/96", "reserved", "IPv4-compatible (deprecated)"),
    _r("::ffff:0:0:0/96", "reserved", "IPv4-translated"),
    _r("fec0::/10", "reserved", "site-local (deprecated)"),
    _r("ff00::/8", "reserved", "multicast"),
    _r("::/0", "reserved", "outside global unicast"),
    _r("2000::/3", "global", "global unicast"),
    # Cloud metadata outside link-local
    _r("fd00:ec2::254/128", "never", "cloud metadata (AWS)"),
)


def _by_specificity(version: int) -> tuple[tuple[int, int, Range], ...]:
    # (network as an int, mask as an int, range), most specific first: the
    # first match is the kind, as in the SQL (longest prefix wins).
    chosen = sorted((r for r in RANGES if r.network.version == version), key=lambda r: -r.network.prefixlen)
    return tuple((int(r.network.network_address), int(r.network.netmask), r) for r in chosen)


_V4 = _by_specificity(4)
_V6 = _by_specificity(6)


def range_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Range | None:
    """The most specific range holding ``address``; None for a global address."""
    value = int(address)
    for network, mask, entry in _V4 if address.version == 4 else _V6:
        if value & mask == network:
            return entry
    return None


_SQL_TEMPLATE = """\
-- Generated by `python -m outbox_worker.ranges` from outbox_worker/ranges.py,
-- the table the worker's send-time check reads too; do not edit by hand.
create function outbox.address_kind(p_addr inet) returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select r.kind
      from (values
ROWS
      ) as r(network, kind)
     where p_addr <<= r.network
     order by masklen(r.network) desc
     limit 1
$$;
"""


def sql_function() -> str:
    """``outbox.address_kind``, as ``sql/schema.sql`` and its migration hold it."""
    ordered = sorted(RANGES, key=lambda r: (r.network.version, int(r.network[0]), r.network.prefixlen))
    rows = ",\n".join(f"        ('{r.network}'::cidr, '{r.kind}')" for r in ordered)
    return _SQL_TEMPLATE.replace("ROWS", rows)


if __name__ == "__main__":
    print(sql_function(), end="")
