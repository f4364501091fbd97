"""Protocol methods every MCP client may call that `MCPServer` does not answer by itself.

`logging/setLevel` (handshake era) and `completion/complete` are part of the base protocol;
without handlers a client that calls them gets "Method not found", which some clients treat
as a broken server and which the official conformance suite fails. The server builder calls
`add_protocol_extras(server)` once; handlers already registered (e.g. a completion handler
for resource templates) are kept.
"""

from __future__ import annotations

from mcp.server import MCPServer, ServerRequestContext
from mcp.types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    EmptyResult,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequestParams,
)


def add_protocol_extras(server: MCPServer) -> None:
    low = server._lowlevel_server  # the documented way to add raw handlers (SDK docs, "low-level server")

    if low.get_request_handler("logging/setLevel") is None:

        async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
            # devbox-mcp sends no protocol log messages (progress carries the output), so there
            # is nothing to filter; accepting the level keeps clients that set one working.
            return EmptyResult()

        low.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)

    if low.get_request_handler("completion/complete") is None:

        @server.completion()
        async def complete(
            ref: PromptReference | ResourceTemplateReference,
            argument: CompletionArgument,
            context: CompletionContext | None,
        ) -> Completion:
            # Resource-template completions are served by `resources` (which wraps this handler);
            # there are no prompts, so anything else has nothing to suggest.
            return Completion(values=[], total=0, has_more=False)
