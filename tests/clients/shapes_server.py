"""An MCP server (stdio) whose tools return one result shape each, to see what a CLI shows its model.

`report.py shapes` runs each agent CLI with this server and the fake model's `SHAPES_PLAN` (one
call per tool, in the order defined here); every text, structured field and link carries a marker
(T1, S2, L3...), so the recording shows which parts of a result reached the model and in what form.
"""

from __future__ import annotations

import base64
from typing import Annotated

from mcp.server import MCPServer
from mcp.types import (
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)
from pydantic import BaseModel

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

server = MCPServer("shapes", version="0.0.1")


class Envelope(BaseModel):
    marker: str


def text(value: str) -> TextContent:
    return TextContent(type="text", text=value)


def link(marker: str) -> ResourceLink:
    return ResourceLink(
        type="resource_link", uri=f"devbox://dbx_x/{marker}", name=marker, description=f"description-{marker}"
    )


@server.tool()
def text_only() -> CallToolResult:
    """A text block, no output schema."""
    return CallToolResult(content=[text("TEXT-T1")])


@server.tool()
def text_and_structured() -> Annotated[CallToolResult, Envelope]:
    """A text block and structured content that differ."""
    return CallToolResult(content=[text("TEXT-T2")], structured_content={"marker": "STRUCT-S2"})


@server.tool()
def text_and_link() -> CallToolResult:
    """A text block and a resource link, no output schema."""
    return CallToolResult(content=[text("TEXT-T3"), link("LINK-L3")])


@server.tool()
def text_link_and_structured() -> Annotated[CallToolResult, Envelope]:
    """A text block, a resource link and structured content."""
    return CallToolResult(
        content=[text("TEXT-T4"), link("LINK-L4")], structured_content={"marker": "STRUCT-S4"}
    )


@server.tool()
def error_with_structured() -> Annotated[CallToolResult, Envelope]:
    """An error result carrying both a text block and structured content."""
    return CallToolResult(
        content=[text("TEXT-T5")], structured_content={"marker": "STRUCT-S5"}, is_error=True
    )


@server.tool()
def text_and_embedded_resource() -> CallToolResult:
    """A text block and an embedded text resource."""
    resource = TextResourceContents(uri="devbox://dbx_x/R6", mime_type="text/plain", text="RESOURCE-R6")
    return CallToolResult(content=[text("TEXT-T6"), EmbeddedResource(type="resource", resource=resource)])


@server.tool()
def text_and_image() -> CallToolResult:
    """A text block and a PNG image."""
    image = ImageContent(type="image", data=base64.b64encode(PNG).decode(), mime_type="image/png")
    return CallToolResult(content=[text("TEXT-T7"), image])


if __name__ == "__main__":
    server.run()
