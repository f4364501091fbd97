"""The MCP tools, one module per area. `register_all` adds every tool to a server."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from . import axons, blueprints, devboxes, execute, files, snapshots, terminal, tunnels


def register_all(server: MCPServer) -> None:
    for module in (devboxes, execute, files, axons, tunnels, snapshots, blueprints, terminal):
        module.register(server)
