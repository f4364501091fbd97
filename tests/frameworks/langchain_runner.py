"""langchain-mcp-adapters driving devbox-mcp over stdio, and ChatOpenAI (Chat Completions) building
the request that would carry each tool result to the model, offline (no request is sent).

Variants:
- `session`: one persistent session (`MultiServerMCPClient.session` + `load_mcp_tools`);
- `get_tools`: the quick-start wiring (`MultiServerMCPClient.get_tools()`), whose tools start a
  server process per call.

Each result goes through the real path: `tool.ainvoke(tool_call)` gives the ToolMessage the agent
loop would append, and `ChatOpenAI._get_request_payload` turns the conversation into the request
body; what the model receives is that body's `tool` message content. A builder that refuses the
content (a `file` block from a resource link) fails the run, as it fails the agent.
"""

from __future__ import annotations

import contextlib
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import load_mcp_tools
from langchain_openai import ChatOpenAI
from plan import Plan, run_main, server_args


async def main(args: Any, plan: Plan, client: dict[str, Any]) -> None:
    from importlib.metadata import version

    client["framework"] = (
        f"langchain-mcp-adapters {version('langchain-mcp-adapters')} + langchain-openai {version('langchain-openai')}"
        f" ({args.variant})"
    )
    mcp = MultiServerMCPClient(
        {"devbox": {"command": args.server, "args": server_args(args), "transport": "stdio"}}
    )
    # A key is required to build the client; nothing is sent with it.
    llm = ChatOpenAI(model="gpt-4o-mini", api_key="sk-offline-test")
    async with contextlib.AsyncExitStack() as stack:
        if args.variant == "get_tools":
            tools = await mcp.get_tools()
        else:
            session = await stack.enter_async_context(mcp.session("devbox"))
            tools = await load_mcp_tools(session)
        by_name = {t.name: t for t in tools}
        conversation: list[Any] = [HumanMessage("Use the devbox tools.")]
        while (call := plan.next_call()) is not None:
            call_id = f"call_{len(plan.calls)}"
            tool_call = {"type": "tool_call", "id": call_id, "name": call.tool, "args": call.args}
            conversation.append(AIMessage("", tool_calls=[tool_call]))
            message = await by_name[call.tool].ainvoke(tool_call)
            assert isinstance(message, ToolMessage)
            conversation.append(message)
            payload = llm._get_request_payload(conversation)
            (sent,) = [m for m in payload["messages"] if m.get("tool_call_id") == call_id]
            plan.record(sent["content"], error=message.status == "error")


if __name__ == "__main__":
    run_main(main)
