"""Execution output on disk: SSE chunks that tail a growing file, and the tail of a file by lines.

Commands write stdout and stderr straight into files, so a byte offset is a file offset and
the backend holds at most one read buffer per live stream, whatever the command prints.

Chunks are cut on UTF-8 character boundaries: a multi-byte character is never split across
two chunks, so `len(chunk.output.encode())` is the chunk's byte length and a client may resume
at `offset + bytes received`. Two rules keep that true at the edges:

- An `offset` that falls inside a multi-byte character starts the stream at the next character
  boundary (the first chunk's `offset` says where); bytes before it are never re-sent.
- Bytes that are not valid UTF-8 are sent as U+FFFD, so for such output only the chunks'
  `offset` fields, not byte counting, give exact resume positions.

Growth is noticed through inotify when the kernel offers it (wake-up within a millisecond, no
work while the command is silent), else by checking the file size every few milliseconds
while a stream is live.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .sse import KEEPALIVE, KEEPALIVE_SECONDS, wait_or_timeout

log = logging.getLogger("devbox_mcp.local")

READ_CHUNK = 256 * 1024  # bytes read (and sent) per chunk: large for throughput, small enough to stay cheap
POLL_SECONDS = 0.005  # size-check interval when inotify is unavailable

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then `len` bytes of name)


# -- UTF-8 boundaries ---------------------------------------------------------------------------


def _sequence_length(lead: int) -> int:
    if lead < 0xC0:
        return 1  # ASCII, or a stray continuation byte (invalid: decoded on its own)
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    if lead < 0xF8:
        return 4
    return 1


def complete_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a multi-byte character."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 != 0x80:  # a lead byte or ASCII: the last character starts here
            return end - back if back < _sequence_length(byte) else end
    return end  # four continuation bytes in a row: invalid anyway, nothing to wait for


def skip_continuation(data: bytes) -> int:
    """How many leading bytes of `data` are continuation bytes of a character that began earlier (≤ 3)."""
    n = 0
    while n < min(3, len(data)) and data[n] & 0xC0 == 0x80:
        n += 1
    return n


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def encode_chunk(output: str, offset: int) -> bytes:
    """The SSE event of one chunk, as `sse.encode_event` writes it, but fast for large text.

    The stdlib encoder escapes a 256 KiB string at 200-350 MB/s, which would cap a stream's
    throughput; orjson does it at several GB/s.
    """
    return b"".join((b"data: ", orjson.dumps({"output": output, "offset": offset}), b"\n\n"))


# -- tail by lines --------------------------------------------------------------------------------


def tail_lines(path: Path, last_n: int, max_bytes: int, *, growing: bool = False) -> tuple[str, bool]:
    """The last `last_n` lines of a file (at most `max_bytes` of them), and whether anything was left out.

    A missing file reads as empty. A trailing newline ends the last line; it does not start a new
    one. When the byte budget cuts a line, the text starts at the next character boundary. A
    `growing` file (its command still runs) is read up to its last complete character.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "", False
    try:
        size = os.fstat(fd).st_size
        if growing and size:
            tail = os.pread(fd, 4, max(size - 4, 0))
            size -= len(tail) - complete_prefix(tail)
        if size == 0:
            return "", False
        if last_n == 0:
            return "", True
        # Line breaks needed in front of the kept text: one per kept line, plus the file's final one.
        need = last_n + (1 if os.pread(fd, 1, size - 1) == b"\n" else 0)
        blocks: list[bytes] = []
        start, count = size, 0
        while start > 0 and size - start < max_bytes and count < need:
            step = min(64 * 1024, start, max_bytes - (size - start))
            start -= step
            block = os.pread(fd, step, start)
            blocks.append(block)
            count += block.count(b"\n")
        data = b"".join(reversed(blocks))
        if count >= need:
            cut = len(data)
            for _ in range(need):
                cut = data.rindex(b"\n", 0, cut)
            cut += 1
        else:
            cut = skip_continuation(data) if start > 0 else 0
        return decode(data[cut:]), start + cut > 0
    finally:
        os.close(fd)


# -- waking up when a file grows ------------------------------------------------------------------


@dataclass
class _Watch:
    wd: int
    waiters: set[asyncio.Event] = field(default_factory=set)


class FileWatcher:
    """Wakes streams when the file they tail is written to: inotify where it works, else polling.

    One inotify descriptor per backend, read from the event loop; one watch per watched file,
    shared by all the streams tailing it.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._libc: ctypes.CDLL | None = None
        self._by_path: dict[str, _Watch] = {}
        self._by_wd: dict[int, _Watch] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed = False

    def _ensure(self) -> bool:
        if self._fd is not None:
            return True
        if self._failed:
            return False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1 failed")
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(fd, self._drain)
        except (OSError, AttributeError) as exc:
            log.info("inotify unavailable (%s); live output streams poll file sizes instead", exc)
            self._failed = True
            return False
        self._libc, self._fd = libc, fd
        return True

    def subscribe(self, path: Path, event: asyncio.Event) -> bool:
        """Set `event` whenever `path` is written to. False when the caller must poll instead."""
        if not self._ensure():
            return False
        assert self._libc is not None
        key = os.fspath(path)
        watch = self._by_path.get(key)
        if watch is None:
            wd = self._libc.inotify_add_watch(self._fd, key.encode(), _IN_MODIFY | _IN_CLOSE_WRITE)
            if wd < 0:
                return False  # e.g. the watch limit is reached: this stream polls
            watch = self._by_wd.get(wd) or _Watch(wd)
            self._by_path[key] = self._by_wd[wd] = watch
        watch.waiters.add(event)
        return True

    def unsubscribe(self, path: Path, event: asyncio.Event) -> None:
        key = os.fspath(path)
        watch = self._by_path.get(key)
        if watch is None:
            return
        watch.waiters.discard(event)
        if not watch.waiters and self._libc is not None:
            del self._by_path[key]
            self._by_wd.pop(watch.wd, None)
            self._libc.inotify_rm_watch(self._fd, watch.wd)

    def watching(self, path: Path) -> bool:
        return os.fspath(path) in self._by_path

    def _drain(self) -> None:
        assert self._fd is not None
        while True:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            pos = 0
            while pos + _EVENT_HEADER.size <= len(buf):
                wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buf, pos)
                pos += _EVENT_HEADER.size + length
                if mask & _IN_Q_OVERFLOW:  # events were lost: wake every stream to look for itself
                    for watch in self._by_wd.values():
                        for waiter in watch.waiters:
                            waiter.set()
                    continue
                watch = self._by_wd.get(wd)
                if watch is None:
                    continue
                for waiter in watch.waiters:
                    waiter.set()
                if mask & _IN_IGNORED:  # the kernel dropped the watch (file deleted): forget it
                    self._by_wd.pop(wd, None)
                    for key in [k for k, w in self._by_path.items() if w is watch]:
                        del self._by_path[key]

    def close(self) -> None:
        if self._fd is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._by_path.clear()
        self._by_wd.clear()


# -- the SSE stream ---------------------------------------------------------------------------------


@dataclass
class OutputSource:
    """What a stream needs to know about one output file of one execution."""

    path: Path
    finished: Callable[[], bool]  # True once the command has exited: no more output after the bytes on disk
    waiters: set[asyncio.Event]  # the execution sets these when it finishes


async def stream_output(source: OutputSource, offset: int, watcher: FileWatcher) -> AsyncIterator[bytes]:
    """SSE events of `{"output", "offset"}` from byte `offset` to the end of the output, then the end.

    Replays what is on disk, then follows the file as the command writes it, with keep-alives
    while it is silent. Ends once the command has exited and every byte has been sent.
    """
    fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC)
    wake = asyncio.Event()
    source.waiters.add(wake)
    polling = not watcher.subscribe(source.path, wake)
    pos = offset + skip_continuation(os.pread(fd, 3, offset))
    last_sent = time.monotonic()
    try:
        while True:
            wake.clear()
            finished = source.finished()  # read before the data: output on disk by now is all there is
            data = os.pread(fd, READ_CHUNK, pos)
            cut = len(data) if finished and len(data) < READ_CHUNK else complete_prefix(data)
            if cut:
                yield encode_chunk(decode(data[:cut]), pos)
                pos += cut
                last_sent = time.monotonic()
                # Let the loop run between chunks: a client that went away is noticed only by a
                # callback, and without this a replay would write the whole file to a dead socket.
                await asyncio.sleep(0)
                continue
            if finished:
                return
            idle_left = max(KEEPALIVE_SECONDS - (time.monotonic() - last_sent), 0.0)
            await wait_or_timeout(wake.wait, min(idle_left, POLL_SECONDS) if polling else idle_left)
            if not polling and not watcher.watching(source.path):  # the kernel dropped the watch
                polling = not watcher.subscribe(source.path, wake)
            if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                yield KEEPALIVE
                last_sent = time.monotonic()
    finally:
        os.close(fd)
        source.waiters.discard(wake)
        watcher.unsubscribe(source.path, wake)
