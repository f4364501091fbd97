"""Where the client sends PTY traffic: the cloud's tunnel host or the embedded backend's prefix,
and the WebSocket on the origin that answered; the tunnel token never shows."""

from __future__ import annotations

import httpx

from mcp_server.runloop import RunloopClient
from mcp_server.runloop.pty import (
    CLOUD_PTY_URL,
    EMBEDDED_PTY_URL,
    PtyEndpoint,
    default_pty_url,
    pty_base_url,
    websocket_url,
)


def test_the_cloud_gets_its_tunnel_host_and_anything_else_the_embedded_prefix() -> None:
    assert default_pty_url("https://api.runloop.ai") == CLOUD_PTY_URL
    assert pty_base_url(CLOUD_PTY_URL, "https://api.runloop.ai", "k3y") == "https://13-k3y.tunnel.runloop.ai"
    assert pty_base_url(CLOUD_PTY_URL, "https://api.runloop.pro", "k") == "https://13-k.tunnel.runloop.pro"
    for local in ("http://127.0.0.1:8123", "http://embedded-backend"):
        assert default_pty_url(local) == EMBEDDED_PTY_URL
        assert pty_base_url(EMBEDDED_PTY_URL, local + "/", "k3y") == f"{local}/tunnel/k3y"
    assert RunloopClient("https://api.runloop.ai", "key").pty_url == CLOUD_PTY_URL
    assert RunloopClient("http://127.0.0.1:9", "key").pty_url == EMBEDDED_PTY_URL


def test_the_websocket_goes_where_the_bootstrap_was_answered() -> None:
    # The embedded backend's connect_url already carries the prefix; the cloud's is at the root.
    answered = httpx.URL("http://127.0.0.1:4567/tunnel/k/pty/main?cols=80&rows=24")
    assert websocket_url(answered, "http://embedded-backend/tunnel/k", "/tunnel/k/pty/main/connect") == (
        "ws://127.0.0.1:4567/tunnel/k/pty/main/connect"
    )
    assert websocket_url(answered, "http://embedded-backend/tunnel/k", "/pty/main/connect") == (
        "ws://127.0.0.1:4567/tunnel/k/pty/main/connect"
    )
    cloud = httpx.URL("https://13-k.tunnel.runloop.ai/pty/main")
    assert websocket_url(cloud, "https://13-k.tunnel.runloop.ai", "/pty/main/attach") == (
        "wss://13-k.tunnel.runloop.ai/pty/main/attach"
    )


def test_the_tunnel_token_is_not_in_a_repr() -> None:
    endpoint = PtyEndpoint("http://127.0.0.1:1/tunnel/k", "tok_secret_value_123")
    assert "tok_secret_value_123" not in repr(endpoint)
    assert endpoint.headers["Authorization"] == "Bearer tok_secret_value_123"
