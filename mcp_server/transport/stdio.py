"""MCP over stdio, read and written by the event loop itself.

The SDK's `stdio_server` reads each line and writes (then flushes) each message through a worker
thread (`anyio.wrap_file`): two or three thread hand-offs per message, 1-3 ms on a loaded machine,
paid by every call and every progress notification (a command's first output line included).
When stdin and stdout are pipes or sockets, which is how clients start a stdio server, this
transport reads and writes them with asyncio's pipe transports instead, and hands the SDK's own
`stdio_server` those streams, so parsing and the message loop stay the SDK's. Anything else (a
terminal, a file, or Windows) keeps the SDK's threaded transport, which does not change the
descriptors' blocking mode.

Like the SDK, it claims fd 0 and fd 1 while serving: they point at the null device and at
stderr, so a library's or a child's stray output never corrupts the wire; the wire is served
from private duplicates, and both descriptors are restored on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from mcp.server import MCPServer
from mcp.server.stdio import stdio_server

# Longest line accepted (the SDK's threaded reader has no limit; a request holding a 100 KB file
# body is a few hundred KB of JSON). Above this, reading stops with an error instead of growing.
LINE_LIMIT = 256 * 1024 * 1024


def _streamable(fd: int) -> bool:
    """A pipe or a socket on a POSIX system: safe to make non-blocking (a terminal is shared with
    the shell; Windows' event loop cannot read pipes given as descriptors)."""
    if sys.platform == "win32":
        return False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


# The wire's descriptors made non-blocking: their pipes may outlive this process, in one (say a
# wrapper script) that expects blocking I/O.
_unblocked: set[int] = set()


def restore_blocking() -> None:
    """Put the wire's pipes back in blocking mode (at exit, including an `os._exit`)."""
    for fd in _unblocked:
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)


def _claim(fd: int, divert: Callable[[], int]) -> tuple[int, Callable[[], None]]:
    """Serve the wire on a private duplicate of `fd`, and point `fd` elsewhere until released."""
    private = os.dup(fd)  # not inherited by children; above 2, as 0-2 are open
    _unblocked.add(private)  # the event loop's pipe transport makes it non-blocking
    elsewhere = divert()
    try:
        os.dup2(elsewhere, fd)
    finally:
        os.close(elsewhere)

    def release() -> None:
        # The duplicate stays open: a transport may still flush into it, and a closed number
        # could be reused by another file meanwhile.
        os.dup2(private, fd)
        restore_blocking()

    return private, release


class _Lines:
    """The lines of the client's messages, as the SDK's reader expects them (text, newline kept)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _Writer:
    """Messages to the client: written without blocking, `flush` waits while the pipe is full."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


@asynccontextmanager
async def loop_stdio() -> AsyncIterator[tuple[object, object]]:
    """The SDK's `stdio_server` streams, over fd 0 and fd 1 read and written on the event loop."""
    if not (_streamable(0) and _streamable(1)):
        async with stdio_server() as streams:
            yield streams
        return
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        stdin_fd, release_in = _claim(0, lambda: os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        stack.callback(release_in)
        stdout_fd, release_out = _claim(1, lambda: os.dup(2))
        stack.callback(release_out)
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(stdin_fd, "rb", buffering=0, closefd=False)
        )
        stack.callback(read_transport.close)
        write_transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(stdout_fd, "wb", buffering=0, closefd=False)
        )
        stack.callback(write_transport.close)
        writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
        async with stdio_server(stdin=_Lines(reader), stdout=_Writer(writer)) as streams:  # type: ignore[arg-type]
            yield streams


async def run_stdio(server: MCPServer) -> None:
    """`server.run("stdio")`, over `loop_stdio`."""
    low = server._lowlevel_server  # as MCPServer.run_stdio_async does
    async with loop_stdio() as (read_stream, write_stream):
        await low.run(read_stream, write_stream, low.create_initialization_options())  # type: ignore[arg-type]
