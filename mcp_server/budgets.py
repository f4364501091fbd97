"""How long one tool call may hold the client before it hands off: one rule for every tool that
waits (`execute` and `stream_logs` follow output, `create_devbox` and `resume_devbox` wait for the
boot).

A client gives up on a request after its own timeout, and what its model then sees is an error
("An error occurred while running the tool"), not our hand-off with the offsets to continue
from; some clients also cancel the call, which kills the command. So a call must answer before
the client's timeout, with whatever it has: `execute` says "still running, continue with
stream_logs", `create_devbox` returns the devbox still booting.

The hold time of a call:
1. `DEVBOX_MCP_WAIT_SECONDS`, when set, is the default, and a call's `wait_seconds` may ask for
   more (up to `max_wait_seconds`): whoever set it knows their client's timeout. The table below
   is then not used.
2. Otherwise a client known by the `clientInfo` name it sends (at `initialize`, or in every
   request's `_meta` on 2026-07-28) is held at most its entry's `hold_seconds`, whatever the call
   asks, and devbox boots are waited for that long at most.
3. Otherwise the call's `wait_seconds`, default `DEFAULT_WAIT_SECONDS`; boots wait `boot_timeout`.

Only clients whose timeout is shorter than the default need an entry. Those that send their own
name wait longer than 50 s (Claude Code `claude-code`: MCP_TOOL_TIMEOUT, hours by default; Codex
`codex-mcp-client`: 60 s; fastmcp and pydantic-ai `fastmcp`: none, pydantic-ai 300 s; the
TypeScript SDK: 60 s, under a name the host picks). The README's per-framework section says
which timeout to raise for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mcp.server.mcpserver import Context

from .settings import Settings

# Under the 60 s at which common clients (Codex, the TypeScript SDK, Claude Desktop) give up.
DEFAULT_WAIT_SECONDS = 50.0


@dataclass(frozen=True)
class KnownClient:
    timeout_seconds: float  # the client's default request timeout
    hold_seconds: float  # what we hold a call for: the timeout less a margin for the round trip
    who: str


KNOWN_CLIENTS: dict[str, KnownClient] = {
    # The MCP Python SDK's default clientInfo name: every framework built on its ClientSession that
    # does not name itself sends it (observed: openai-agents 0.24, langchain-mcp-adapters 0.3.2,
    # pydantic-ai 1.x). They cannot be told apart, so the shortest default among them rules:
    # openai-agents' client_session_timeout_seconds=5 (also AutoGen's and Google ADK's 5 s).
    "mcp": KnownClient(5.0, 3.0, "MCP Python SDK default name: openai-agents, langchain-mcp-adapters, ..."),
}


def client_name(ctx: Context) -> str | None:
    params = ctx.session.client_params
    return params.client_info.name if params is not None else None


def client_cap(ctx: Context, settings: Settings) -> float | None:
    """The hold limit of this call's client when the table applies (rule 2), else None."""
    if settings.wait_seconds is not None:
        return None
    known = KNOWN_CLIENTS.get(client_name(ctx) or "")
    return known.hold_seconds if known else None


def wait_seconds(ctx: Context, settings: Settings, requested: float | None) -> float:
    """How long `execute` / `stream_logs` follow output before handing off."""
    default = DEFAULT_WAIT_SECONDS if settings.wait_seconds is None else settings.wait_seconds
    wanted = default if requested is None else requested
    return min(wanted, client_cap(ctx, settings) or math.inf, settings.max_wait_seconds)


def boot_seconds(ctx: Context, settings: Settings) -> float:
    """How long `create_devbox` / `resume_devbox` wait for the devbox to run before returning it as it is."""
    return min(settings.boot_timeout, client_cap(ctx, settings) or math.inf)
