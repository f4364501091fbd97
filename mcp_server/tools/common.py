"""What every tool module shares: the per-server state, argument types, and error translation."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..resources import ResourcesHandle
from ..runloop import RunloopClient, RunloopError
from ..settings import Settings
from ..terminal.sessions import Terminals


@dataclass
class AppState:
    """Lives for one server run (the MCP lifespan): the API client, the settings, the handle to
    the resources (list changes, links to full output) and the server's terminal sessions.

    The client may be given as the function that makes it: it is then made at its first use, not
    as the server starts, so `initialize` is answered without waiting for it (making one costs
    tens of ms: TLS set-up, HTTP pools), and a run that calls no tool never makes one.
    """

    make_client: RunloopClient | Callable[[], RunloopClient]
    settings: Settings
    resources: ResourcesHandle
    terminals: Terminals

    @property
    def client(self) -> RunloopClient:
        if not isinstance(self.make_client, RunloopClient):
            self.make_client = self.make_client()
        return self.make_client

    @property
    def made_client(self) -> RunloopClient | None:
        """The client, if one was made (for the run's end to close it)."""
        return self.make_client if isinstance(self.make_client, RunloopClient) else None


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


def at_most(limit: int) -> AfterValidator:
    """A length bound that is checked but not published.

    Generous bounds (a 100,000-character command, a 256-character name) only stop abuse: a model
    never comes near them, so stating them in every schema costs each conversation tools/list bytes
    and tells it nothing. Bounds a model must plan around (page sizes, wait times) stay in the schema."""

    def check(value: Any) -> Any:
        if value is not None and len(value) > limit:
            unit = "items" if isinstance(value, list) else "characters"
            raise ValueError(f"at most {limit:,} {unit}, got {len(value):,}")
        return value

    return AfterValidator(check)


def _id_characters(value: str) -> str:
    if not re.fullmatch(_ID, value):
        raise ValueError("an id has only letters, digits, '_', '.', ':' and '-'")
    return value


# Ids become URL path segments (no slashes, no spaces): checked, not published, like `at_most`:
# an id comes from an earlier result, so its shape tells a model nothing.
Id = Annotated[str, at_most(200), AfterValidator(_id_characters)]


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError("an environment variable name is letters, digits and '_', not starting with a digit")
    return value


# Checked, not published (like `at_most`): a model writes such names right.
EnvName = Annotated[str, at_most(256), AfterValidator(_env_name)]
DevboxId = Id
ExecutionId = Id
AxonId = Id
FilePath = Annotated[
    str,
    Field(min_length=1, description="relative paths are from home"), at_most(4096),
]


class EnvVar(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: EnvName
    value: str


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1), at_most(256)]
    value: str


# Key/value maps are lists of {name, value}: strict schema converters (OpenAI's strict mode)
# refuse open objects, whose keys a schema cannot declare.
EnvVars = Annotated[list[EnvVar], at_most(1000)]
Labels = Annotated[list[Label], at_most(100)]


def as_map(field: str, items: list[EnvVar] | list[Label] | None) -> dict[str, str] | None:
    """The map a `[{name, value}]` argument stands for; a name given twice is refused."""
    return unique_map(field, None if items is None else [(item.name, item.value) for item in items])


def unique_map(field: str, pairs: list[tuple[str, str]] | None, key: str = "name") -> dict[str, str] | None:
    """The map a list-of-pairs argument stands for; a `key` given twice is refused, naming it.

    Checked here rather than in a pydantic validator, whose message would echo the values
    (environment values can be secrets)."""
    if pairs is None:
        return None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in out:
            raise ToolError(f"{field}: {key} {name!r} is given twice; give each {key} once")
        out[name] = value
    return out


def annotations(
    *, read_only: bool = False, destructive: bool = False, idempotent: bool = False, open_world: bool = False
) -> ToolAnnotations:
    """The hints that differ from MCP's defaults (not read-only, destructive, not idempotent, open world).

    A client reads a missing hint as its default, the worst case, so spelling a default out says
    nothing and costs every conversation bytes of tools/list. `destructive` and `idempotent` mean
    something only for a tool that writes, so a read-only tool states neither. No display title:
    clients show the tool's name, which says the same (`create_devbox`, "Create devbox")."""
    return ToolAnnotations(
        read_only_hint=True if read_only else None,
        destructive_hint=None if read_only or destructive else False,
        idempotent_hint=True if idempotent and not read_only else None,
        open_world_hint=None if open_world else False,
    )
