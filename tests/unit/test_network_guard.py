"""The SSRF guard's rule without a network: which addresses an HTTP node may call, and why not.

Python's ``is_global`` differs between versions (on 3.11 multicast, 6to4, NAT64 and site-local
addresses count as global), so every range is pinned here with the words its message uses."""

from __future__ import annotations

import socket

import pytest
from yarl import URL

from linkflow_stream.core.node_contract import NodeFailure
from linkflow_stream.nodes.http import origin
from linkflow_stream.nodes.network_guard import (
    AddressRefused,
    GuardedSocketFactory,
    check_literal,
    refusal,
)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "127.0.0.0/8 (loopback)"),
        ("10.1.2.3", "10.0.0.0/8 (private)"),
        ("172.16.5.4", "172.16.0.0/12 (private)"),
        ("192.168.0.1", "192.168.0.0/16 (private)"),
        ("169.254.1.1", "169.254.0.0/16 (link-local)"),
        ("100.64.0.1", "100.64.0.0/10 (carrier-grade NAT)"),
        ("100.127.255.254", "100.64.0.0/10 (carrier-grade NAT)"),
        ("0.0.0.0", "0.0.0.0/8 (this network"),  # noqa: S104 - an address refused, not bound
        ("0.1.2.3", "0.0.0.0/8 (this network"),
        ("192.0.0.9", "192.0.0.0/24 (IETF protocol assignments)"),
        ("192.0.0.170", "192.0.0.0/24 (IETF protocol assignments)"),
        ("198.18.0.1", "198.18.0.0/15 (benchmarking)"),
        ("198.19.255.255", "198.18.0.0/15 (benchmarking)"),
        ("192.0.2.1", "192.0.2.0/24 (documentation)"),
        ("224.0.0.1", "224.0.0.0/4 (multicast)"),
        ("239.255.255.250", "224.0.0.0/4 (multicast)"),
        ("240.0.0.1", "240.0.0.0/4 (reserved)"),
        ("255.255.255.255", "240.0.0.0/4 (reserved)"),
        ("::1", "::1/128 (loopback)"),
        ("::", "::/128 (unspecified)"),
        ("fd12:3456::1", "fc00::/7 (unique local (private))"),
        ("fe80::1", "fe80::/10 (link-local)"),
        ("fe80::1%eth0", "fe80::/10 (link-local)"),
        ("fec0::1", "fec0::/10 (site-local)"),
        ("ff02::1", "ff00::/8 (multicast)"),
        ("ff0e::1", "ff00::/8 (multicast)"),
        ("2001:db8::1", "2001:db8::/32 (documentation)"),
        ("::7f00:1", "::/8 (reserved)"),
        ("::ffff:127.0.0.1", "(IPv4-mapped 127.0.0.1) is in 127.0.0.0/8 (loopback)"),
        ("::ffff:10.0.0.1", "(IPv4-mapped 10.0.0.1) is in 10.0.0.0/8 (private)"),
        ("::ffff:100.64.0.1", "(IPv4-mapped 100.64.0.1) is in 100.64.0.0/10 (carrier-grade NAT)"),
        ("64:ff9b::7f00:1", "(NAT64 127.0.0.1) is in 127.0.0.0/8 (loopback)"),
        ("64:ff9b::a00:1", "(NAT64 10.0.0.1) is in 10.0.0.0/8 (private)"),
        ("64:ff9b:1::a00:1", "64:ff9b:1::/48 (local-use NAT64)"),
        ("2002:7f00:1::", "carries the 6to4 address 127.0.0.1, in 127.0.0.0/8 (loopback)"),
        ("2002:c0a8:1::1", "carries the 6to4 address 192.168.0.1, in 192.168.0.0/16 (private)"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32 (Teredo)"),
    ],
)
def test_addresses_that_are_not_globally_routable_are_refused_by_default(address: str, words: str) -> None:
    reason = refusal(address, allow_private=False)
    assert reason is not None, f"{address} was allowed"
    assert words in reason
    assert "LINKFLOW_HTTP_ALLOW_PRIVATE_NETWORKS=true allows private networks" in reason
    assert refusal(address, allow_private=True) is None, "allowing private networks allows it"


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",  # just below carrier-grade NAT
        "100.128.0.0",  # just above it
        "198.17.255.255",  # just below benchmarking
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",  # IPv4-mapped: the global IPv4 host it stands for
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8, what DNS64 answers on an IPv6-only host
        "2002:808:808::1",  # 6to4 carrying 8.8.8.8
    ],
)
def test_globally_routable_addresses_are_allowed(address: str) -> None:
    assert refusal(address, allow_private=False) is None


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("169.254.169.254", "the cloud instance metadata service"),
        ("fd00:ec2::254", "the AWS instance metadata service over IPv6"),
        ("169.254.170.2", "the AWS ECS container credentials endpoint"),
        ("100.100.100.200", "the Alibaba Cloud metadata service"),
        ("::ffff:169.254.169.254", "(IPv4-mapped 169.254.169.254) is the cloud instance metadata service"),
        ("::ffff:169.254.170.2", "(IPv4-mapped 169.254.170.2) is the AWS ECS container credentials"),
        ("64:ff9b::a9fe:aa02", "(NAT64 169.254.170.2) is the AWS ECS container credentials endpoint"),
        ("2002:a9fe:a9fe::", "carries the 6to4 address 169.254.169.254, the cloud instance metadata"),
        ("64:ff9b:1::a9fe:a9fe", "carries the embedded IPv4 address 169.254.169.254"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_metadata_addresses_are_refused_even_with_private_networks_allowed(
    address: str, words: str, allow_private: bool
) -> None:
    """They hand out the host's cloud credentials; no deployment needs a workflow to call them."""
    reason = refusal(address, allow_private=allow_private)
    assert reason is not None, f"{address} was allowed"
    assert words in reason
    assert reason.endswith("refused even with LINKFLOW_HTTP_ALLOW_PRIVATE_NETWORKS=true")


@pytest.mark.parametrize("host", ["169.254.170.2", "[fd00:ec2::254]", "[::ffff:169.254.169.254]"])
def test_an_ip_literal_host_fails_as_validation(host: str) -> None:
    with pytest.raises(NodeFailure) as info:
        check_literal(host, allow_private=True)
    assert (info.value.error_type, info.value.retryable) == ("validation", False)
    assert info.value.message.startswith(f"refused to call {host}: ")


def test_a_host_name_is_left_to_the_resolver() -> None:
    check_literal("metadata.google.internal", allow_private=False)


@pytest.mark.parametrize(
    ("address", "allow_private"),
    [(("127.0.0.1", 80), False), (("169.254.170.2", 80), True), (("::ffff:10.0.0.1", 443, 0, 0), False)],
)
def test_the_socket_factory_refuses_the_address_about_to_be_connected(
    address: tuple[str, int] | tuple[str, int, int, int], allow_private: bool
) -> None:
    """The connector's last step before ``connect``: no socket exists for a refused address."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    factory = GuardedSocketFactory(allow_private=allow_private)
    with pytest.raises(AddressRefused, match=f"refused to connect to {address[0]}: "):
        factory((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address))


def test_the_socket_factory_makes_a_socket_for_an_allowed_address() -> None:
    factory = GuardedSocketFactory(allow_private=False)
    with factory((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("8.8.8.8", 443))) as sock:
        assert sock.family == socket.AF_INET


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://api.example.com/a", "http://API.example.com:80/b?x=1", True),
        ("https://api.example.com/a", "https://api.example.com:443/b", True),
        ("https://api.example.com/a", "http://api.example.com/a", False),
        ("http://api.example.com/a", "http://api.example.com:8080/a", False),
        ("http://api.example.com/a", "http://evil.example.com/a", False),
        ("http://127.0.0.1:8000/", "http://localhost:8000/", False),
    ],
)
def test_origin_is_scheme_host_and_port(a: str, b: str, same: bool) -> None:
    """A redirect keeps the node's credentials only within one origin."""
    assert (origin(URL(a)) == origin(URL(b))) is same
