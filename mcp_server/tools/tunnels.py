"""`expose_port`: a URL a person can open to reach a port of a devbox (its web app, an API).

A devbox has one tunnel, serving every port; the tool enables it when the devbox has none
(authenticated unless asked for a public one) and otherwise uses it as it is, saying which it
is. The URL is the cloud's `https://{port}-{key}.tunnel.runloop.ai`, or the embedded backend's
tunnel proxy on this machine. The result carries the URL as text, as structured content and as
a `resource_link`, and the bearer token when the tunnel is authenticated: the person needs it.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ResourceLink, TextContent
from pydantic import BaseModel

from ..runloop import BadRequest, TunnelView
from .common import DevboxId, annotations, api_errors, state


class ExposedPort(BaseModel):
    url: str
    token: str | None = None  # send as Authorization: Bearer; None: the URL is public


def exposed(tunnel: TunnelView, port: int) -> ExposedPort:
    return ExposedPort(url=tunnel.url(port), token=tunnel.auth_token if tunnel.auth_mode == "authenticated" else None)


def tunnel_text(tunnel: TunnelView, port: int | str, *, with_token: bool = True) -> str:
    """One line for the model: the URL and who may open it. get_devbox leaves the token out (it is
    for the person expose_port was called for, not for every look at the devbox)."""
    url = tunnel.url(port)
    if tunnel.auth_mode != "authenticated":
        return f"{url} (public: anyone with the URL)"
    if not with_token:
        return f"{url} (authenticated: expose_port gives the token)"
    return f"{url} (send Authorization: Bearer {tunnel.auth_token})"


async def expose_port(
    ctx: Context, devbox_id: DevboxId, port: int, public: bool = False
) -> Annotated[CallToolResult, ExposedPort]:
    """Browser URL for a devbox port (enables its tunnel)."""
    if not 1 <= port <= 65535:  # checked here, not in the schema: every tools/list byte counts
        raise ToolError(f"port must be from 1 to 65535; got {port}")
    client = state(ctx).client
    with api_errors():
        tunnel = (await client.get_devbox(devbox_id)).tunnel
        if tunnel is None:
            try:
                tunnel = await client.enable_tunnel(devbox_id, auth_mode="open" if public else "authenticated")
            except BadRequest:
                # Enabled meanwhile (or by a retry whose answer was lost): use that one; else the error stands.
                tunnel = (await client.get_devbox(devbox_id)).tunnel
                if tunnel is None:
                    raise
    result = exposed(tunnel, port)
    text = f"port {port} of {devbox_id}: {tunnel_text(tunnel, port)}"
    if public != (result.token is None):
        text += f"\nthe devbox's tunnel is {'authenticated' if public else 'public'}; it has one for every port"
    return CallToolResult(
        content=[
            TextContent(type="text", text=text),
            ResourceLink(type="resource_link", uri=result.url, name=f"{devbox_id}-port-{port}", mime_type="text/html"),
        ],
        structured_content=result.model_dump(mode="json"),
    )


def register(server: MCPServer) -> None:
    server.add_tool(expose_port, annotations=annotations(idempotent=True, open_world=True))
