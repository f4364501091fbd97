"""The MCP tools, one module per area. `register_all` adds every tool to a server."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from . import axons, devboxes, execute, files, terminal, tunnels


def register_all(server: MCPServer) -> None:
    for module in (devboxes, execute, files, axons, tunnels, terminal):
        module.register(server)
