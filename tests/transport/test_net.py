"""The listening sockets both HTTP servers use (mcp_server/net.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mcp_server.net import base_url, listen, url_host


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


async def _accepted_nodelay(sock: socket.socket) -> int:
    """TCP_NODELAY of the connection asyncio accepts on `sock` (as uvicorn's does)."""
    seen: list[int] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    host, port = sock.getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    await reader.read()
    writer.close()
    server.close()
    await server.wait_closed()
    return seen[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_connections_accepted_by_asyncio_send_small_writes_at_once(host: str) -> None:
    """Without IPPROTO_TCP on the listening socket asyncio leaves TCP_NODELAY off (Nagle)."""
    if ":" in host and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    assert asyncio.run(_accepted_nodelay(listen(host, 0))) == 1


def test_ipv6_hosts_are_bracketed_in_urls() -> None:
    assert url_host("::1") == "[::1]"
    assert url_host("[::1]") == "[::1]"
    assert url_host("127.0.0.1") == "127.0.0.1"
    with listen("127.0.0.1", 0) as sock:
        assert base_url(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"
    if _has_ipv6_loopback():
        with listen("[::1]", 0) as sock:
            assert base_url(sock) == f"http://[::1]:{sock.getsockname()[1]}"
