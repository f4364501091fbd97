"""The proxy's reading of a TLS ClientHello (a real one, made by Python's ssl in memory) and of
hostname rules; the proxy itself is tested end to end on test hosts in test_egress.py."""

from __future__ import annotations

import ssl

import pytest

from mcp_server.local.egress import is_blocked
from mcp_server.local.policy_proxy import sni_of
from mcp_server.local.policy_store import NetworkPolicy


def client_hello(server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_server_name_is_read_and_a_truncated_hello_is_refused() -> None:
    hello = client_hello("Allowed.Example")
    assert sni_of(hello) == "allowed.example"
    assert sni_of(client_hello(None)) is None  # no name: nothing to compare (the CONNECT host still decides)
    for cut in (10, 60, len(hello) - 20):
        with pytest.raises(ValueError):
            sni_of(hello[:cut])
    assert sni_of(b"SSH-2.0-OpenSSH\r\n") is None  # not TLS


def test_exact_names_and_wildcards() -> None:
    policy = NetworkPolicy("np_x", "x", 0, 0, allowed_hostnames=["github.com", "*.npmjs.org"])
    assert policy.allows("github.com") and policy.allows("GitHub.com.")
    assert policy.allows("registry.npmjs.org") and policy.allows("a.b.npmjs.org")
    assert not policy.allows("npmjs.org") and not policy.allows("evilnpmjs.org")
    assert not policy.allows("api.github.com") and not policy.allows("github.com.evil.org")


@pytest.mark.parametrize(
    ("address", "blocked"),
    [("169.254.169.254", True), ("10.1.2.3", True), ("172.20.0.1", True), ("192.168.1.1", True),
     ("100.64.0.1", True), ("127.0.0.1", True), ("224.0.0.1", True), ("::1", True), ("fe80::1", True),
     ("fd00::1", True), ("::ffff:169.254.169.254", True), ("198.51.100.7", False), ("203.0.113.9", False),
     ("8.8.8.8", False), ("2606:4700::1111", False)],
)  # fmt: skip
def test_which_addresses_are_blocked(address: str, blocked: bool) -> None:
    assert is_blocked(address) is blocked
    assert is_blocked("198.51.100.1", ["198.51.100.1"])  # the host's own address
