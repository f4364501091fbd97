"""Protocol methods every MCP client may call that `MCPServer` does not answer by itself.

`logging/setLevel` (handshake era) and `completion/complete` are part of the base protocol;
without handlers a client that calls them gets "Method not found", which some clients treat
as a broken server and which the official conformance suite fails. The server builder calls
`add_protocol_extras(server)` once; handlers already registered (e.g. a completion handler
for resource templates) are kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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

Completer = Callable[
    [PromptReference | ResourceTemplateReference, CompletionArgument, CompletionContext | None],
    Awaitable[Completion | None],
]

MAX_COMPLETIONS = 100  # the spec's cap on values per response


def add_protocol_extras(server: MCPServer, completer: Completer | None = None) -> None:
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
            result = await completer(ref, argument, context) if completer else None
            if result is None:
                return Completion(values=[], total=0, has_more=False)
            values = result.values[:MAX_COMPLETIONS]
            return Completion(
                values=values,
                total=result.total,
                has_more=result.has_more or len(result.values) > len(values),
            )
