"""SSRF guard: which addresses an HTTP node may reach.

The rule (``refusal``): by default only globally routable addresses. An address is judged with
every IPv4 address it carries: an IPv4-mapped (``::ffff:127.0.0.1``) or NAT64 (``64:ff9b::/96``)
address is the IPv4 host it stands for, and a 6to4 or Teredo address is refused if the IPv4
address inside it is. Python's ``is_global`` alone is not enough (on 3.11 multicast, 6to4,
NAT64 and site-local addresses count as global), so the ranges below are named, and the
message says which one refused an address. The cloud metadata addresses are refused even when
``LINKFLOW_HTTP_ALLOW_PRIVATE_NETWORKS`` allows everything else.

Where it is applied, so no socket is ever connected to a refused address:

* ``check_literal``, before each hop (the first request and every redirect), on an IP-literal
  host, which aiohttp does not resolve;
* ``GuardedResolver``, on every address a name resolves to; aiohttp connects only to the
  addresses its resolver returned (or cached), so a DNS answer that changes between the check
  and the connect is never used unchecked;
* ``GuardedSocketFactory``, on the address the connector is about to connect the socket to,
  whatever path the address took: the last word.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from linkflow_stream.core.node_contract import NodeFailure

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_SETTING = "LINKFLOW_HTTP_ALLOW_PRIVATE_NETWORKS"

ALWAYS_REFUSED: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "the cloud instance metadata service (AWS, GCP, Azure, ...)",
    ipaddress.ip_address("fd00:ec2::254"): "the AWS instance metadata service over IPv6",
    ipaddress.ip_address("169.254.170.2"): "the AWS ECS container credentials endpoint",
    ipaddress.ip_address("100.100.100.200"): "the Alibaba Cloud metadata service",
}
"""Refused even with private networks allowed: they hand out the host's cloud credentials."""


def _networks(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), label) for net, label in pairs)


NOT_GLOBAL = _networks(
    ("0.0.0.0/8", "this network: 0.0.0.0 reaches the local host"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("::/8", "reserved"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
"""Ranges that are not globally routable, named for messages; the first match names an address."""

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LAST_32_BITS = (NAT64, ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("::/96"))


def _stands_for(ip: IPAddress) -> tuple[IPAddress, str | None]:
    """The IPv4 host an IPv4-mapped or well-known-prefix NAT64 address is translated to, and how."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped, "IPv4-mapped"
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    return ip, None


def _carried(ip: IPAddress) -> list[tuple[ipaddress.IPv4Address, str]]:
    """IPv4 addresses a tunnel or translation address carries inside it."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found: list[tuple[ipaddress.IPv4Address, str]] = []
    if ip.sixtofour is not None:
        found.append((ip.sixtofour, "6to4"))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [(server, "Teredo server"), (client, "Teredo client")]
    if any(ip in net for net in _LAST_32_BITS) and int(ip) > 1:
        found.append((ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "embedded IPv4"))
    return found


def not_global(ip: IPAddress) -> str | None:
    """Which non-global range ``ip`` is in (``"in 10.0.0.0/8 (private)"``), or None if global."""
    for net, label in NOT_GLOBAL:
        if ip.version == net.version and ip in net:
            return f"in {net} ({label})"
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not globally routable"
    return None


def refusal(address: str, *, allow_private: bool) -> str | None:
    """Why ``address`` may not be called, or None if it may."""
    original: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    ip, translation = _stands_for(original)
    shown = f"{original} ({translation} {ip})" if translation else str(ip)
    carried = _carried(ip)
    always = f"refused even with {ALLOW_SETTING}=true"
    if ip in ALWAYS_REFUSED:
        return f"{shown} is {ALWAYS_REFUSED[ip]}, {always}"
    for inner, kind in carried:
        if inner in ALWAYS_REFUSED:
            return f"{shown} carries the {kind} address {inner}, {ALWAYS_REFUSED[inner]}, {always}"
    if allow_private:
        return None
    hint = f"; {ALLOW_SETTING}=true allows private networks"
    reason = not_global(ip)
    if reason:
        return f"{shown} is {reason}{hint}"
    for inner, kind in carried:
        reason = not_global(inner)
        if reason:
            return f"{shown} carries the {kind} address {inner}, {reason}{hint}"
    return None


def check_literal(host: str, *, allow_private: bool) -> None:
    """Refuse an IP-literal host (aiohttp does not resolve those, so the resolver never sees them)."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return
    reason = refusal(host.strip("[]"), allow_private=allow_private)
    if reason:
        raise NodeFailure("validation", f"refused to call {host}: {reason}")


class GuardedResolver(AbstractResolver):
    """A resolver that fails when any address of a name is refused."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            reason = refusal(r["host"], allow_private=self.allow_private)
            if reason:
                raise NodeFailure("validation", f"refused to call {host}: {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        extra: dict[str, Any] = {"allow_private": self.allow_private}
        return f"GuardedResolver({extra})"


class AddressRefused(OSError):
    """The socket factory refused the address a connection was about to be made to."""


class GuardedSocketFactory:
    """``TCPConnector(socket_factory=...)``: makes the socket for one address the connector is
    about to connect to, or raises ``AddressRefused`` (an ``OSError``, which is how the connector
    expects a connect attempt to fail) when the guard refuses that address."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def __call__(self, addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, address = addr_info
        reason = refusal(str(address[0]), allow_private=self.allow_private)
        if reason:
            raise AddressRefused(f"refused to connect to {address[0]}: {reason}")
        return socket.socket(family=family, type=type_, proto=proto)
