"""expose_port and get_devbox's tunnel through a real MCP client (both eras) against the embedded
backend, and the URL opened the way a person's client does."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from mcp import Client
from support.mcp_client import call_error, call_ok, structured, text_of
from support.tunnels import proxy_address, start_app

from mcp_server.runloop import TunnelView

pytestmark = pytest.mark.anyio


def _get(url: str, token: str | None = None) -> httpx.Response:
    base, host = proxy_address(url)
    headers = {"Host": host} | ({"Authorization": f"Bearer {token}"} if token else {})
    return httpx.get(base + url.split(host, 1)[1], headers=headers, timeout=30)


async def test_expose_port_gives_a_url_a_person_opens_with_its_token(mcp: Client, sdk) -> None:  # noqa: ANN001
    devbox_id = structured(await call_ok(mcp, "create_devbox", {}))["id"]
    try:
        await anyio.to_thread.run_sync(start_app, sdk, devbox_id)
        result = await call_ok(mcp, "expose_port", {"devbox_id": devbox_id, "port": 8000})
        exposed = structured(result)
        url, token = exposed["url"], exposed["token"]
        assert set(exposed) == {"url", "token"} and token
        assert url.startswith("http://8000-") and ".localhost:" in url
        links = [block for block in result.content if block.type == "resource_link"]
        assert [str(link.uri) for link in links] == [url]
        assert url in text_of(result) and f"Bearer {token}" in text_of(result)
        opened = await anyio.to_thread.run_sync(_get, url + "/", token)
        assert opened.status_code == 200 and "Hello from the devbox" in opened.text
        assert (await anyio.to_thread.run_sync(_get, url + "/")).status_code == 401
        # Again, asking for a public URL: the devbox's one tunnel stays as it is, and the result says so.
        again = await call_ok(mcp, "expose_port", {"devbox_id": devbox_id, "port": 8000, "public": True})
        assert structured(again) == exposed and "tunnel is authenticated" in text_of(again)
        shown = structured(await call_ok(mcp, "get_devbox", {"devbox_id": devbox_id}))
        assert shown["tunnel"] == f"{url.replace('8000-', '{port}-', 1)} (authenticated: expose_port gives the token)"
        assert token not in json.dumps(shown)
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": devbox_id})


async def test_a_public_port_needs_no_token(mcp: Client, sdk) -> None:  # noqa: ANN001
    devbox_id = structured(await call_ok(mcp, "create_devbox", {}))["id"]
    try:
        await anyio.to_thread.run_sync(start_app, sdk, devbox_id)
        shown = structured(await call_ok(mcp, "get_devbox", {"devbox_id": devbox_id}))
        assert "tunnel" not in shown  # none yet: a field without a value is left out
        result = await call_ok(mcp, "expose_port", {"devbox_id": devbox_id, "port": 8000, "public": True})
        exposed = structured(result)
        assert set(exposed) == {"url"} and "public: anyone with the URL" in text_of(result)
        opened = await anyio.to_thread.run_sync(_get, exposed["url"] + "/conn")
        assert opened.status_code == 200
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": devbox_id})


async def test_bad_ports_and_devboxes_are_clear_errors(mcp: Client) -> None:
    assert "port must be from 1 to 65535" in await call_error(mcp, "expose_port", {"devbox_id": "dbx_x", "port": 0})
    assert "not found" in await call_error(mcp, "expose_port", {"devbox_id": "dbx_nope", "port": 80})


def test_against_the_cloud_the_url_is_runloops_tunnel_url() -> None:
    """Runloop's TunnelView has no url_template: the URL is the one its documentation gives."""
    tunnel = TunnelView.model_validate({"tunnel_key": "abc123", "auth_mode": "open", "create_time_ms": 1})
    assert tunnel.url(3000) == "https://3000-abc123.tunnel.runloop.ai"
    assert "auth_token" not in repr(TunnelView(tunnel_key="k", auth_token="secret-token"))
