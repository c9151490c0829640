"""SSRF guard: which addresses an HTTP node may reach.

The check runs on every resolved address at connect time (so DNS rebinding cannot slip past a
check made earlier) and on IP-literal URLs, including each redirect's target.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from linkflow_stream.core.node_contract import NodeFailure

# Cloud metadata endpoints stay refused even when private networks are allowed.
ALWAYS_REFUSED = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def refusal(address: str, *, allow_private: bool) -> str | None:
    """Why ``address`` may not be called, or None if it may."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in ALWAYS_REFUSED:
        return f"{ip} is a cloud metadata address"
    if allow_private:
        return None
    if (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    ):
        return f"{ip} is a loopback, private, link-local or reserved address"
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
