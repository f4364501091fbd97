"""pydantic-ai driving devbox-mcp over stdio with its defaults, and a FunctionModel that plays the
plan and records each tool result exactly as pydantic-ai renders it for a model API.

pydantic-ai 2 connects with `MCPToolset` (a FastMCP client); 1.x with `MCPServerStdio` (the MCP
SDK's client), removed in 2. Either way the rendering is `ToolReturnPart.model_response_str_and_user_content`
(what the OpenAI, Anthropic and Gemini models send), or a `RetryPromptPart` for a tool error.
"""

from __future__ import annotations

from typing import Any

from plan import Plan, run_main, server_args
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel


def toolset(command: str, args: list[str]) -> Any:
    try:
        from pydantic_ai.mcp import MCPToolset
    except ImportError:  # pydantic-ai 1.x
        from pydantic_ai.mcp import MCPServerStdio

        return MCPServerStdio(command, args=args)
    from fastmcp.client.transports import StdioTransport

    return MCPToolset(StdioTransport(command=command, args=args))


def model_input(messages: list[ModelMessage]) -> tuple[str, bool] | None:
    """The last tool result as the model receives it: the tool message text, plus any text the
    framework moved into a following user message (files, images)."""
    last = messages[-1]
    if not isinstance(last, ModelRequest):
        return None
    for part in last.parts:
        if isinstance(part, RetryPromptPart):
            return part.model_response(), True
        if part.part_kind == "tool-return":
            text, extra = part.model_response_str_and_user_content()
            return text + "".join(x for x in extra if isinstance(x, str)), getattr(part, "outcome", "") == "error"
    return None


async def main(args: Any, plan: Plan, client: dict[str, Any]) -> None:
    import pydantic_ai

    client["framework"] = f"pydantic-ai {pydantic_ai.__version__}"

    def play(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if (seen := model_input(messages)) is not None:
            plan.record(seen[0], error=seen[1])
        call = plan.next_call()
        if call is None:
            return ModelResponse(parts=[TextPart("done")])
        names = [t.name for t in info.function_tools]
        name = next(n for n in names if n == call.tool or n.endswith("_" + call.tool))
        return ModelResponse(parts=[ToolCallPart(name, call.args, tool_call_id=f"call_{len(plan.calls)}")])

    agent = Agent(FunctionModel(play), toolsets=[toolset(args.server, server_args(args))])
    async with agent:
        await agent.run("Use the devbox tools.")


if __name__ == "__main__":
    run_main(main)
