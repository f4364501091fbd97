"""Which clients get `resource_link` blocks in tool results, and the record that decides it.

A link is worth its bytes only to a client that follows it. Some clients cannot: Claude Code
ignores them, and langchain-mcp-adapters turns one into a file block that the OpenAI Chat
Completions request builder refuses, so the agent run crashes. The text (and the structured
content) of a cut result always says how to read the rest (the `stream_logs` offsets), so no
client needs a link. `Settings.resource_links` (`DEVBOX_MCP_RESOURCE_LINKS`) decides:
`always`, `never`, or `auto` (the default): only for a client that has read a resource
(`resources/read`) earlier in its session.

A session is the connection in the handshake era. The 2026 era has no sessions (every request
stands alone), so there a client is known by its `clientInfo` name and version for the life of
this server; a 2026 request without client info gets no links under `auto`.
"""

from __future__ import annotations

import weakref
from typing import Any

from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from ..settings import LinkMode


def _key(session: Any) -> object | None:
    """What identifies the requesting client: its connection, or (2026 era) its name and version."""
    connection = getattr(session, "_connection", None)
    if connection is None:
        return None
    if connection.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return connection
    params = connection.client_params
    info = params.client_info if params is not None else None
    return ("client", info.name, info.version) if info is not None else None


class ResourceReaders:
    """The clients that have read a resource on this server (connections are forgotten when closed)."""

    def __init__(self) -> None:
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._clients: set[object] = set()

    def remember(self, session: Any) -> None:
        key = _key(session)
        if isinstance(key, tuple):
            self._clients.add(key)
        elif key is not None:
            self._connections.add(key)

    def has_read(self, session: Any) -> bool:
        key = _key(session)
        if isinstance(key, tuple):
            return key in self._clients
        return key is not None and key in self._connections

    def wants_links(self, session: Any, mode: LinkMode) -> bool:
        return mode == "always" or (mode == "auto" and self.has_read(session))
