"""A scripted stand-in for a model API, so a real agent CLI can drive devbox-mcp with no model.

Run as a script (`python fake_model.py RECORD_FILE [PLAN]`) inside the test's network namespace: it
binds a loopback port, prints it on its first stdout line, and serves two wire dialects:

- Anthropic Messages (`POST /v1/messages`, streaming SSE or not) for Claude Code;
- OpenAI Responses (`POST /v1/responses`, streaming SSE) for Codex.

Every request is appended to RECORD_FILE as one JSON line (`method`, `path`, `body`), so a test
reads exactly what the CLI handed its model after each tool call.

The model is stateless: it counts the results of its plan's calls already in the conversation and
plays the next step of its plan (`PLAN`, or `SHAPES_PLAN` against shapes_server.py), taking the
ids it needs (devbox, axon) from earlier results, as a model reads them. Both CLIs defer MCP tools
behind a search tool by default (Claude Code's `ToolSearch`, Codex's `tool_search`): the model
then searches for a tool before its first call, as a real one must, and calls it by the name the
CLI announced. A request that offers none of our
tools (a title or summary request, a quota probe) gets a short text answer. Plan calls have the id
`call_<step>`, searches `search_<step>`, so a test finds each result.

Also imported by the tests for `PLAN` and the readers of a recording; standard library only.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SERVER = "devbox"  # the server name the CLIs are configured with
FILE_TEXT = "alpha-file-text\nbeta-file-text\n"
DONE_TEXT = "All steps done."


@dataclass(frozen=True)
class Step:
    tool: str
    search: str  # what a model would type into a keyword tool search to find the tool
    arguments: Callable[[dict[str, str]], dict[str, Any]]  # from the ids seen so far


PLAN: list[Step] = [
    Step("create_devbox", "create a linux devbox", lambda ids: {"name": "cli-client-test"}),
    Step(
        "execute",
        "run a shell command",
        lambda ids: {
            "devbox_id": ids["devbox"],
            "command": "echo line1; echo line2; echo line3; echo err1 >&2; exit 3",
        },
    ),
    Step(
        "execute", "run a shell command", lambda ids: {"devbox_id": ids["devbox"], "command": "seq 1 200000"}
    ),
    Step(
        "write_file",
        "write a file",
        lambda ids: {"devbox_id": ids["devbox"], "path": "notes.txt", "contents": FILE_TEXT},
    ),
    Step("read_file", "read a file", lambda ids: {"devbox_id": ids["devbox"], "path": "notes.txt"}),
    Step("create_axon", "create an event stream", lambda ids: {"name": "cli-client-test"}),
    Step(
        "publish_event",
        "publish an event",
        lambda ids: {"axon_id": ids["axon"], "event_type": "greeting", "payload": {"n": 1}},
    ),
    Step(
        "sql_query",
        "run a sql query",
        lambda ids: {
            "axon_id": ids["axon"],
            "sql": "SELECT upper(event_type) AS shout, 6 * 7 AS answer FROM rl_axon_events",
        },
    ),
    Step("shutdown_devbox", "shut down a devbox", lambda ids: {"devbox_id": ids["devbox"]}),
]
STEP_CREATE, STEP_ECHO, STEP_SEQ, STEP_WRITE, STEP_READ, STEP_AXON, STEP_PUBLISH, STEP_SQL, STEP_SHUTDOWN = (
    range(len(PLAN))
)
# One call per tool of shapes_server.py (same order as its SHAPES).
SHAPES_PLAN: list[Step] = [
    Step(tool, tool.replace("_", " "), lambda ids: {})
    for tool in (
        "text_only",
        "text_and_structured",
        "text_and_link",
        "text_link_and_structured",
        "error_with_structured",
        "text_and_embedded_resource",
        "text_and_image",
    )
]
PLANS = {"devbox": PLAN, "shapes": SHAPES_PLAN}
ID_PATTERNS = {
    "devbox": (STEP_CREATE, re.compile(r"dbx_[0-9A-Za-z]{20}")),
    "axon": (STEP_AXON, re.compile(r"axn_[0-9A-Za-z]{20}")),
}


def call_id(step: int) -> str:
    return f"call_{step}"


def search_id(step: int) -> str:
    return f"search_{step}"


def step_of(call: str, kind: str = "call") -> int | None:
    match = re.fullmatch(rf"(?:toolu_)?{kind}_(\d+)", call)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------- what the model sees of a result


def visible_text(content: Any) -> str:
    """The text of a tool result as the model reads it: text parts joined, other parts as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(visible_text(part) for part in content)
    if isinstance(content, dict):
        if content.get("type") == "tool_result":
            return visible_text(content.get("content"))
        if content.get("type") == "function_call_output":
            return visible_text(content.get("output"))
        if content.get("type") in ("text", "input_text", "output_text") and isinstance(
            content.get("text"), str
        ):
            return content["text"]
    return json.dumps(content, ensure_ascii=False)


def wire_bytes(result: Any) -> int:
    """Size of what the model is handed for a result: its content as the CLI sent it (compact JSON, UTF-8)."""
    if isinstance(result, dict):
        result = result.get("content", result.get("output", result))
    if isinstance(result, str):
        return len(result.encode())
    return len(json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode())


# ---------------------------------------------------------------- dialects


def _sse(events: list[dict]) -> bytes:
    return "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in events).encode()


class AnthropicMessages:
    """Claude Code. Tools are `mcp__<server>__<tool>`; deferred ones are listed by name in a reminder."""

    path = "/v1/messages"
    search_tool = "ToolSearch"

    def offered(self, body: dict) -> list[str]:
        return [tool.get("name", "") for tool in body.get("tools") or []]

    def deferred(self, body: dict, tool: str) -> str | None:
        name = f"mcp__{SERVER}__{tool}"
        return name if name in json.dumps(body) else None

    def can_search(self, body: dict) -> bool:
        return self.search_tool in self.offered(body)

    def results(self, body: dict) -> dict[str, Any]:
        """Tool call id -> the tool_result block the CLI sent for it."""
        found: dict[str, Any] = {}
        for message in body.get("messages") or []:
            if message.get("role") == "user" and isinstance(message.get("content"), list):
                for block in message["content"]:
                    if block.get("type") == "tool_result":
                        found[block.get("tool_use_id", "")] = block
        return found

    def search(self, body: dict, call: str, step: Step) -> tuple[str, bytes]:
        query = {
            "query": f"select:mcp__{SERVER}__{step.tool}",
            "max_results": 5,
        }  # the form its prompt suggests
        return self.tool_call(body, call, self.search_tool, query)

    def tool_call(self, body: dict, call: str, name: str, arguments: dict) -> tuple[str, bytes]:
        return self._message(
            body, [{"type": "tool_use", "id": f"toolu_{call}", "name": name, "input": arguments}]
        )

    def text(self, body: dict, text: str) -> tuple[str, bytes]:
        return self._message(body, [{"type": "text", "text": text}])

    def _message(self, body: dict, blocks: list[dict]) -> tuple[str, bytes]:
        stop_reason = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake"),
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 10},
        }
        if not body.get("stream"):
            return "application/json", json.dumps(message).encode()
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        events: list[dict] = [{"type": "message_start", "message": start}]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                opened, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
            else:
                opened = {**block, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            events.append({"type": "content_block_start", "index": index, "content_block": opened})
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
            events.append({"type": "content_block_stop", "index": index})
        events.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": message["usage"],
            }
        )
        events.append({"type": "message_stop"})
        return "text/event-stream", _sse(events)


class OpenAIResponses:
    """Codex. MCP tools come as a namespace `mcp__<server>` (called with `namespace` + `name`); when
    deferred, only the namespace is announced and `tool_search` loads tools into the conversation."""

    path = "/v1/responses"
    namespace = f"mcp__{SERVER}"

    def offered(self, body: dict) -> list[str]:
        names: list[str] = []
        tools = list(body.get("tools") or [])
        for item in _items(body):
            if item.get("type") == "tool_search_output":
                tools.extend(item.get("tools") or [])
        for tool in tools:
            names.append(tool.get("name", ""))
            for inner in tool.get("tools") or []:
                names.append(f"{tool.get('name', '')}__{inner.get('name', '')}")
        return names

    def deferred(self, body: dict, tool: str) -> str | None:
        return f"{self.namespace}__{tool}" if self.namespace in json.dumps(body) else None

    def can_search(self, body: dict) -> bool:
        return any(tool.get("type") == "tool_search" for tool in body.get("tools") or [])

    def results(self, body: dict) -> dict[str, Any]:
        """Tool call id -> the function_call_output (or tool_search_output) item the CLI sent for it."""
        return {
            item.get("call_id", ""): item
            for item in _items(body)
            if item.get("type") in ("function_call_output", "custom_tool_call_output", "tool_search_output")
        }

    def search(self, body: dict, call: str, step: Step) -> tuple[str, bytes]:
        arguments = {"query": step.search, "limit": 8}
        return self._response(
            [{"type": "tool_search_call", "call_id": call, "execution": "client", "arguments": arguments}]
        )

    def tool_call(self, body: dict, call: str, name: str, arguments: dict) -> tuple[str, bytes]:
        item = {"type": "function_call", "call_id": call, "name": name, "arguments": json.dumps(arguments)}
        if name.startswith(f"{self.namespace}__"):
            item["namespace"], item["name"] = self.namespace, name.removeprefix(f"{self.namespace}__")
        return self._response([item])

    def text(self, body: dict, text: str) -> tuple[str, bytes]:
        message = {
            "type": "message",
            "role": "assistant",
            "id": "msg_fake",
            "content": [{"type": "output_text", "text": text}],
        }
        return self._response([message])

    def _response(self, items: list[dict]) -> tuple[str, bytes]:
        usage = {
            "input_tokens": 10,
            "input_tokens_details": None,
            "output_tokens": 10,
            "output_tokens_details": None,
            "total_tokens": 20,
        }
        events: list[dict] = [{"type": "response.created", "response": {"id": "resp_fake"}}]
        events += [{"type": "response.output_item.done", "item": item} for item in items]
        events.append({"type": "response.completed", "response": {"id": "resp_fake", "usage": usage}})
        return "text/event-stream", _sse(events)


def _items(body: dict) -> list[dict]:
    items = body.get("input")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


Dialect = AnthropicMessages | OpenAIResponses
DIALECTS: dict[str, Dialect] = {d.path: d for d in (AnthropicMessages(), OpenAIResponses())}


def our_tool(names: list[str], tool: str) -> str | None:
    """The name under which the CLI offers our server's `tool` (`mcp__devbox__execute` and the like)."""
    return next((name for name in names if name.endswith(f"__{tool}") and SERVER in name), None)


def next_move(dialect: Dialect, body: dict, plan: list[Step] = PLAN) -> tuple[str, bytes]:
    results = dialect.results(body)
    step = max((s for s in map(step_of, results) if s is not None), default=-1) + 1
    if step >= len(plan):
        return dialect.text(body, DONE_TEXT)
    planned = plan[step]
    name = our_tool(dialect.offered(body), planned.tool)
    if name is None:
        name = dialect.deferred(body, planned.tool)
        if name is None:
            return dialect.text(body, "ok")  # a side request (title, summary, quota probe): not our loop
        if dialect.can_search(body) and not any(step_of(call, "search") == step for call in results):
            return dialect.search(body, search_id(step), planned)
    texts = {step_of(call): visible_text(result) for call, result in results.items()}
    ids = {}
    for key, (source, pattern) in ID_PATTERNS.items():
        found = pattern.search(texts.get(source, ""))
        ids[key] = found.group(0) if found else f"{key}_id_not_seen"
    return dialect.tool_call(body, call_id(step), name, planned.arguments(ids))


# ---------------------------------------------------------------- reading a recording


def load(record_file: str) -> list[dict]:
    with open(record_file, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def first_results(records: list[dict], kind: str = "call") -> dict[int, Any]:
    """Plan step -> the result the CLI sent right after that call (the first request that carries it)."""
    found: dict[int, Any] = {}
    for record in records:
        dialect = DIALECTS.get(record["path"].split("?")[0])
        if dialect is None or not isinstance(record.get("body"), dict):
            continue
        for call, result in dialect.results(record["body"]).items():
            step = step_of(call, kind)
            if step is not None and step not in found:
                found[step] = result
    return found


# ---------------------------------------------------------------- the server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    record_file = ""
    plan = PLAN
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it so)
        pass

    def _record(self, body: Any) -> None:
        line = json.dumps({"method": self.command, "path": self.path, "body": body}, ensure_ascii=False)
        with self.lock, open(self.record_file, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _not_found(self) -> None:
        self._send(
            404, "application/json", b'{"error": {"type": "not_found_error", "message": "fake model"}}'
        )

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._record(None)
        self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = {"unparsed": raw.decode("utf-8", "replace")}
        self._record(body)
        path = self.path.split("?")[0]
        if path.endswith("/count_tokens"):
            self._send(200, "application/json", b'{"input_tokens": 100}')
            return
        dialect = DIALECTS.get(path)
        if dialect is None or not isinstance(body, dict):
            self._not_found()
            return
        self._send(200, *next_move(dialect, body, self.plan))


def main(record_file: str, plan: str = "devbox") -> None:
    Handler.record_file, Handler.plan = record_file, PLANS[plan]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:3])
