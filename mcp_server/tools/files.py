"""File tools: `read_file` (text with line ranges and a size bound; binary only on request) and
`write_file`.

Binary files are refused unless asked for: their bytes mean nothing as text and base64 costs
context. On request, an image (PNG, JPEG, GIF, WebP) comes back as image content, under
`binary_cap`; another binary file as base64, under the output budget (as any result).

Results: the structured content is the whole result (for text, the selected lines as shaped
text; for an image, which content block holds it; for other binaries, the base64); the text
renders it for a model.
"""

from __future__ import annotations

import base64
import mimetypes
import shlex
from typing import Annotated, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import BaseModel, Field

from ..settings import Settings
from ..shaping import line_hint, shape
from .common import DevboxId, FilePath, annotations, api_errors, at_most, result, state

# Text files are scanned up to this size to select lines; beyond it the result says so.
TEXT_SCAN_BYTES = 32 * 1024 * 1024
SNIFF_BYTES = 8192

_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"\x7fELF", "application/x-executable"),
]
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


class FileRead(BaseModel):
    path: str
    kind: Literal["text", "image", "binary"]
    mime_type: str
    size_bytes: int | None  # None: too large to tell
    text: str | None = None  # cleaned; a marker replaces an omitted middle
    total_lines: int | None = None
    start_line: int | None = None
    end_line: int | None = None
    omitted_bytes: int = 0  # left out of text (see its marker)
    scanned_bytes: int | None = None  # only the first bytes were read
    content_index: int | None = None  # index of the image content block
    base64: str | None = None  # binary: the file's bytes


class FileWritten(BaseModel):
    path: str
    bytes_written: int


def sniff_type(path: str, data: bytes) -> tuple[str, bool]:
    """(mime type, is binary): magic numbers first, then NUL bytes / invalid UTF-8."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime, True
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", True
    sample = data[:SNIFF_BYTES]
    binary = b"\x00" in sample
    if not binary:
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A character cut at the end of the sample is fine; anything else is not text.
            binary = exc.start < len(sample) - 4
    guessed = mimetypes.guess_type(path)[0]
    if binary:
        return guessed or "application/octet-stream", True
    return guessed if guessed and guessed.startswith("text/") else "text/plain", False


def select_lines(text: str, start_line: int | None, end_line: int | None, tail_lines: int | None) -> tuple[str, int, int, int]:
    """The selected lines, their first and last numbers (1-based), and the file's line count.

    Lines end at "\n" only, as `sed`/`wc -l` and the shaping marker count them: `splitlines`
    would also split at form feeds and U+2028 (common in minified JS) and shift every number."""
    lines = text.split("\n")
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    total = len(lines)
    if tail_lines is not None:
        first = max(total - tail_lines, 0)
        last = total
    else:
        first = (start_line or 1) - 1
        last = min(end_line if end_line is not None else total, total)
        if first >= total and total:
            raise ToolError(f"start_line {start_line} is past the end: the file has {total} lines")
        if end_line is not None and start_line is not None and end_line < start_line:
            raise ToolError(f"end_line {end_line} is before start_line {start_line}")
    return "".join(lines[first:last]), first + 1, max(last, first), total


def binary_cap(settings: Settings, mime: str) -> int:
    """Largest binary file read_file returns: an image is shown as an image, other bytes go to the
    model as base64 text, which must fit the output budget like any result."""
    if mime in IMAGE_TYPES:
        return settings.binary_cap
    return min(settings.binary_cap, settings.output_budget * 3 // 4)


async def read_file(
    ctx: Context,
    devbox_id: DevboxId,
    path: FilePath,
    start_line: Annotated[int | None, Field(ge=1, description="1-based")] = None,
    end_line: Annotated[int | None, Field(ge=1, description="inclusive")] = None,
    tail_lines: Annotated[int | None, Field(ge=1, le=100_000, description="only the last N lines")] = None,
    binary: Annotated[
        bool, Field(description="images as image content, other bytes as base64 (capped)")
    ] = False,
) -> Annotated[CallToolResult, FileRead]:
    """Read a text file in a devbox (optionally a line range or the last lines), bounded. A binary
    file is refused (with its size and type) unless binary is true."""
    if tail_lines is not None and (start_line is not None or end_line is not None):
        raise ToolError("use either tail_lines or start_line/end_line, not both")
    app = state(ctx)
    with api_errors():
        download = await app.client.download_file(devbox_id, path, max_bytes=max(TEXT_SCAN_BYTES, app.settings.binary_cap))
    data = download.data
    mime, is_binary = sniff_type(path, data)
    size = download.size if download.truncated else len(data)
    size_text = f"{size} bytes" if size is not None else f"more than {len(data)} bytes"
    if is_binary:
        cap = binary_cap(app.settings, mime)
        if not binary:
            raise ToolError(
                f"{path} is a binary file ({mime}, {size_text}); not returned as text. "
                f"Pass binary: true to get it (up to {cap} bytes)"
            )
        if download.truncated or len(data) > cap:
            raise ToolError(
                f"{path} is {size_text} ({mime}), over the {cap}-byte cap for binary reads; "
                "process it in the devbox instead (e.g. execute with file, head, xxd)"
            )
        blob = base64.b64encode(data).decode()
        head = f"{path}: {mime}, {size} bytes"
        if mime in IMAGE_TYPES:
            envelope = FileRead(path=path, kind="image", mime_type=mime, size_bytes=size, content_index=1)
            return CallToolResult(
                content=[TextContent(type="text", text=head), ImageContent(type="image", data=blob, mime_type=mime)],
                structured_content=envelope.model_dump(mode="json"),
            )
        envelope = FileRead(path=path, kind="binary", mime_type=mime, size_bytes=size, base64=blob)
        return result(envelope, f"{head}, base64:\n{blob}\n")
    if binary:
        raise ToolError(f"{path} is a text file ({mime}); read it without binary: true")
    if download.truncated and tail_lines is not None:
        # The last lines of the part read are not the file's last lines.
        raise ToolError(
            f"{path} is {size_text}, more than the {len(data)} bytes read_file scans, so its last lines "
            f"cannot be read this way; use execute with: tail -n {tail_lines} {shlex.quote(path)}"
        )
    text = data.decode("utf-8", "replace")
    selected, first, last, total = select_lines(text, start_line, end_line, tail_lines)
    shaped = shape(selected, app.settings.output_budget, label=path, hint=line_hint, base_line=first)
    envelope = FileRead(
        path=path, kind="text", mime_type=mime, size_bytes=size, text=shaped.text, total_lines=total,
        start_line=first, end_line=last, omitted_bytes=shaped.omitted_bytes,
        scanned_bytes=len(data) if download.truncated else None,
    )
    note = ""
    if download.truncated:
        note = f" (only the first {len(data)} bytes were scanned: the file is larger)"
    head = f"{path}: lines {first}-{last} of {total}{note}\n"
    return result(envelope, head + shaped.text)


async def write_file(
    ctx: Context,
    devbox_id: DevboxId,
    path: FilePath,
    contents: Annotated[str, Field(description="UTF-8 text"), at_most(5_000_000)],
) -> FileWritten:
    """Write a text file in a devbox, replacing it if it exists."""
    with api_errors():
        done = await state(ctx).client.write_file_contents(devbox_id, path, contents)
    if done.exit_status not in (None, 0):
        raise ToolError(f"write_file {path} failed: {(done.stderr or done.stdout).strip() or f'exit {done.exit_status}'}")
    return FileWritten(path=path, bytes_written=len(contents.encode()))


def register(server: MCPServer) -> None:
    server.add_tool(read_file, annotations=annotations(read_only=True, idempotent=True))
    server.add_tool(write_file, annotations=annotations(destructive=True, idempotent=True))
