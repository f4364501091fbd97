"""`upload_file`: a multipart/form-data body streamed into the devbox as it arrives.

The body is parsed here, part by part, instead of by Starlette's form parser, which spools
every file part into the host's temporary directory before the route sees it (and without a
Content-Length, with no cap at all). Here the bytes of the `file` part go straight into the
devbox's atomic write (files.write) while they arrive, counted against the limit; nothing is
left when the upload is refused or the client goes away. A client that sends `file` before
`path` (form field order is the client's choice) gets its bytes spooled into the devbox's
backend-private state directory until the path is known, never into the host's /tmp.
"""

from __future__ import annotations

import os
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from . import files
from .devboxes import Devbox
from .errors import ApiError, disk_full, is_disk_full
from .http import body_chunks

MAX_FIELD_BYTES = 64 * 1024  # `path` and any other plain field
MAX_PARTS = 16
BODY_OVERHEAD = 1024 * 1024  # room for the form's fields and part headers beside the file's bytes
USAGE = "upload_file takes multipart/form-data with a 'path' field and a 'file' part"


@dataclass
class _Field:
    name: str
    value: str


@dataclass
class _FileStart:
    name: str


class _FileEnd:
    pass


_Event = _Field | _FileStart | _FileEnd | bytes


class MultipartReader:
    """Events of a multipart body (fields whole, file parts as a stream of bytes), in body order."""

    def __init__(self, content_type: str, chunks: AsyncIterator[bytes]) -> None:
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind.lower() != b"multipart/form-data" or not boundary:
            raise ApiError(400, f"{USAGE} (Content-Type must be multipart/form-data with a boundary)")
        self._chunks = chunks
        self._events: deque[_Event] = deque()
        self._name = b""
        self._value = b""
        self._disposition = b""
        self._field: bytearray | None = None  # the data of the current plain field; None in a file part
        self._field_name = ""
        self._parts = 0
        self._ended = False
        self._finished = False
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_part_data": self._part_data,
                    "on_part_end": self._part_end,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_end": self._end,
                },
            )
        except FormParserError as exc:
            raise ApiError(400, f"upload_file body is not valid multipart/form-data: {exc}") from None

    async def next(self) -> _Event | None:
        """The next event; None once the body ended with its closing boundary."""
        while not self._events:
            if self._finished:
                return None
            chunk = await anext(self._chunks, None)
            if chunk is None:
                self._finished = True
                if not self._ended:
                    raise ApiError(400, "upload_file body ended before the multipart closing boundary; nothing was written")
                continue
            try:
                self._parser.write(chunk)
            except FormParserError as exc:
                raise ApiError(400, f"upload_file body is not valid multipart/form-data: {exc}") from None
        return self._events.popleft()

    # -- parser callbacks (synchronous, within `write`) ----------------------------------------

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(400, f"upload_file body has more than {MAX_PARTS} parts; {USAGE}")
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._name.lower() == b"content-disposition":
            self._disposition = self._value
        self._name, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise ApiError(400, f"a part of the upload_file body has no Content-Disposition name; {USAGE}")
        self._field_name = name.decode("utf-8", errors="replace")
        if self._field_name == "file" or b"filename" in options:
            self._field = None
            self._events.append(_FileStart(self._field_name))
        else:
            self._field = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is None:
            self._events.append(data[start:end])
            return
        self._field += data[start:end]
        if len(self._field) > MAX_FIELD_BYTES:
            raise ApiError(413, f"the field {self._field_name!r} of upload_file is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._field is None:
            self._events.append(_FileEnd())
            return
        try:
            value = self._field.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"the field {self._field_name!r} of upload_file is not UTF-8 text") from None
        self._events.append(_Field(self._field_name, value))

    def _end(self) -> None:
        self._ended = True


async def _file_bytes(reader: MultipartReader) -> AsyncIterator[bytes]:
    """The bytes of the file part being read, up to its end; 413 past the upload limit."""
    size = 0
    while True:
        event = await reader.next()
        if isinstance(event, bytes):
            size += len(event)
            if size > files.MAX_UPLOAD_BYTES:
                raise ApiError(413, f"upload is more than {files.MAX_UPLOAD_BYTES} bytes, the limit; nothing was written")
            if event:
                yield event
        elif isinstance(event, _FileEnd):
            return
        else:  # the parser ends a part before the next begins, and the body before its end
            raise ApiError(400, "upload_file body ended inside the 'file' part; nothing was written")


async def _skip(reader: MultipartReader) -> None:
    async for _ in _file_bytes(reader):
        pass


async def receive(request: Request, devbox: Devbox) -> str:
    """Stream the upload into the devbox; returns the path it was written to."""
    reader = MultipartReader(
        request.headers.get("content-type", ""),
        body_chunks(request, files.MAX_UPLOAD_BYTES + BODY_OVERHEAD),
    )
    path: str | None = None
    spool: Path | None = None
    written = False
    try:
        while (event := await reader.next()) is not None:
            if isinstance(event, _Field):
                if event.name == "path":
                    if path is not None:
                        raise ApiError(400, "upload_file body has two 'path' fields; send one")
                    path = files.check_path(event.value, "path")
            elif isinstance(event, _FileStart):
                if event.name != "file":
                    await _skip(reader)  # a part the API does not define: read past it, keep nothing
                elif written or spool is not None:
                    raise ApiError(400, "upload_file body has two 'file' parts; send one file per upload")
                elif path is not None:
                    await files.write(devbox, path, _file_bytes(reader))
                    written = True
                else:
                    spool = await _spool(devbox, _file_bytes(reader))
        if path is None:
            raise ApiError(400, "upload_file needs a 'path' field (relative to /home/user, or absolute)")
        if spool is not None:
            await files.write(devbox, path, _read_spool(spool))
        elif not written:
            raise ApiError(400, "upload_file needs a 'file' part with the file's bytes")
        return path
    finally:
        if spool is not None:
            spool.unlink(missing_ok=True)


async def _spool(devbox: Devbox, source: AsyncIterator[bytes]) -> Path:
    """Keep a file part that came before its path in the devbox's state directory (not the host's /tmp)."""
    spool = files.partial_writes_dir(devbox) / f"{secrets.token_hex(16)}.spool"
    try:
        fd = await anyio.to_thread.run_sync(
            lambda: os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        )
        try:
            buffer = bytearray()
            async for chunk in source:
                buffer += chunk
                if len(buffer) >= files.CHUNK:
                    await anyio.to_thread.run_sync(_write_all, fd, bytes(buffer))
                    buffer.clear()
            await anyio.to_thread.run_sync(_write_all, fd, bytes(buffer))
        finally:
            os.close(fd)
    except BaseException as exc:
        spool.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise disk_full("receive the upload") from None
        raise
    return spool


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _read_spool(spool: Path) -> AsyncIterator[bytes]:
    fh = await anyio.open_file(spool, "rb")
    try:
        while chunk := await fh.read(files.CHUNK):
            yield chunk
    finally:
        await fh.aclose()
