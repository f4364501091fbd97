"""openai-agents driving devbox-mcp over stdio (`MCPServerStdio`, its defaults: a 5 s
`client_session_timeout_seconds`), with a custom Model that plays the plan and records each
`function_call_output` item exactly as the Runner hands it to the model.

Variants: `default`, and `structured` (`use_structured_content=True`: the model gets
`json.dumps(structuredContent)` instead of the content blocks).
"""

from __future__ import annotations

import json
from typing import Any

from agents import Agent, Model, ModelResponse, Runner, Usage, set_tracing_disabled
from agents.mcp import MCPServerStdio
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText
from plan import Plan, run_main, server_args


class PlanModel(Model):
    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
        outputs = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        if outputs and len(outputs) == len(self.plan.calls):
            output = outputs[-1]["output"]
            self.plan.record(output, error=isinstance(output, str) and output.startswith("An error occurred"))
        call = self.plan.next_call()
        if call is None:
            text = ResponseOutputText(type="output_text", text="done", annotations=[])
            item: Any = ResponseOutputMessage(
                id="msg_1", type="message", role="assistant", content=[text], status="completed"
            )
        else:
            n = len(self.plan.calls)
            item = ResponseFunctionToolCall(
                id=f"fc_{n}", call_id=f"call_{n}", type="function_call", name=call.tool, arguments=json.dumps(call.args)
            )
        return ModelResponse(output=[item], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the runner calls Runner.run, not run_streamed")


async def main(args: Any, plan: Plan, client: dict[str, Any]) -> None:
    from agents.version import __version__

    set_tracing_disabled(True)  # no trace export: nothing leaves the machine
    structured = args.variant == "structured"
    client["framework"] = f"openai-agents {__version__}" + (" use_structured_content" if structured else "")
    async with MCPServerStdio(
        params={"command": args.server, "args": server_args(args)}, use_structured_content=structured
    ) as server:
        agent = Agent(name="devbox", instructions="Use the devbox tools.", model=PlanModel(plan), mcp_servers=[server])
        await Runner.run(agent, "go", max_turns=40)


if __name__ == "__main__":
    run_main(main)
