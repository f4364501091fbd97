"""What every tool module shares: the per-server state, argument types, and error translation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from ..resources import ResourcesHandle
from ..runloop import RunloopClient, RunloopError
from ..settings import Settings
from ..terminal.sessions import Terminals


@dataclass
class AppState:
    """Lives for one server run (the MCP lifespan): the API client, the settings, the handle to
    the resources (list changes, links to full output) and the server's terminal sessions."""

    client: RunloopClient
    settings: Settings
    resources: ResourcesHandle
    terminals: Terminals


def state(ctx: Context) -> AppState:
    return ctx.request_context.lifespan_context


@contextmanager
def api_errors(context: str | None = None) -> Iterator[None]:
    """Turn a client error into a tool error (an `isError` result) that says what failed and why.

    Translated once: the client's message is already one line with at most one hint (see
    `runloop/errors.py`) and without the API key, so nothing is added here but which step
    failed (`context`, when a tool takes several); the SDK prefixes the tool's name. No
    traceback or chained exception reaches the caller.
    """
    try:
        yield
    except RunloopError as exc:
        raise ToolError(f"{context}: {exc}" if context else str(exc)) from None


def result(structured: BaseModel, text: str) -> CallToolResult:
    """A result whose structured content is the whole result and whose text is its rendering.

    Many clients hand their model only the structured content when a result has one (Claude
    Code, Codex, pydantic-ai), others only the text: both must carry everything, so the
    structured content holds the output itself (typed: shaped stdout and stderr, file text,
    rows), and the text renders the same result for a model to read (a status line, then the
    output). Used by tools whose text is not simply the JSON of their result.
    """
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=structured.model_dump(mode="json", exclude_none=False),
    )


def page_text(kind: str, lines: list[str], has_more: bool, last_id: str | None) -> str:
    """One line per item for the model to read (the structured content has the items with every field),
    and how to go on."""
    head = f"{len(lines)} {kind}{'' if len(lines) == 1 else 'es' if kind.endswith('x') else 's'}"
    more = f"\nmore: call again with starting_after={last_id}" if has_more and last_id else ""
    return head + (":\n" + "\n".join(lines) if lines else "") + more


# Ids become URL path segments: no slashes, no dots-only names, no spaces.
_ID = r"^[\w.:-]+$"
DevboxId = Annotated[str, Field(max_length=200, pattern=_ID)]
ExecutionId = Annotated[str, Field(max_length=200, pattern=_ID)]
AxonId = Annotated[str, Field(max_length=200, pattern=_ID)]
FilePath = Annotated[
    str,
    Field(min_length=1, max_length=4096, description="relative paths are from home"),
]


class EnvVar(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the pattern needs one character
    value: str


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    value: str


# Key/value maps are lists of {name, value}: strict schema converters (OpenAI's strict mode)
# refuse open objects, whose keys a schema cannot declare.
EnvVars = Annotated[list[EnvVar], Field(max_length=1000)]
Labels = Annotated[list[Label], Field(max_length=100)]


def as_map(field: str, items: list[EnvVar] | list[Label] | None) -> dict[str, str] | None:
    """The map a `[{name, value}]` argument stands for; a name given twice is refused.

    Checked here rather than in a pydantic validator, whose message would echo the values
    (environment values can be secrets)."""
    if items is None:
        return None
    out: dict[str, str] = {}
    for item in items:
        if item.name in out:
            raise ToolError(f"{field}: name {item.name!r} is given twice; give each name once")
        out[item.name] = item.value
    return out


def annotations(
    *, read_only: bool = False, destructive: bool = False, idempotent: bool = False, open_world: bool = False,
    title: str | None = None,
) -> ToolAnnotations:
    """Every hint spelled out: clients assume the worst (destructive, non-idempotent) when one is missing."""
    return ToolAnnotations(
        title=title,
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )
