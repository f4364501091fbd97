"""Handlers of two base-protocol methods that `MCPServer` does not answer by itself.

`logging/setLevel` (handshake era) and `completion/complete` are part of the base protocol;
without handlers a client that calls them gets "Method not found", which some clients treat
as a broken server and which the official conformance suite fails. The server builder adds
both once, giving the completion handler what completes the resource templates' arguments.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import MCPServer, ServerRequestContext
from mcp.types import CompleteRequestParams, CompleteResult, Completion, EmptyResult, SetLevelRequestParams

# The completions of one kind of reference (e.g. resource templates); None: nothing to say about it.
Completer = Callable[[Any, CompleteRequestParams], Awaitable[CompleteResult | None]]


def add_logging_and_completion(server: MCPServer, complete_templates: Completer) -> None:
    low = server._lowlevel_server  # the documented way to add raw handlers (SDK docs, "low-level server")

    async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        # devbox-mcp sends no protocol log messages (progress carries the output), so there is
        # nothing to filter; accepting the level keeps clients that set one working.
        return EmptyResult()

    async def complete(ctx: ServerRequestContext, params: CompleteRequestParams) -> CompleteResult:
        found = await complete_templates(ctx, params)
        if found is not None:
            return found
        # There are no prompts, and an argument no template knows has nothing to suggest.
        return CompleteResult(completion=Completion(values=[], total=0, has_more=False))

    low.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    low.add_request_handler("completion/complete", CompleteRequestParams, complete)
