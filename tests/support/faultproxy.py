"""A real HTTP/1.1 fault-injecting proxy on loopback, for tests that need a network to misbehave.

It runs on its own thread and event loop, in front of an upstream (the embedded backend).
Each client connection carries one request: the proxy forwards it upstream with
`Connection: close` and pipes the response back, so request boundaries are exact without
parsing responses. Rules, matched by a regex on the request target (path and query), say what
to do to the next `times` matching requests (None: every one):

    proxy.fail(r"/v1/axons/[^/]+/publish$", status=503, times=1, forward=True, retry_after=0)
    proxy.cut(r"/stream_stdout_updates", after_bytes=4096, after_first_event=True)  # every response
    proxy.delay(r"/v1/devboxes$", seconds=0.2, times=1)

`forward=True` sends the request upstream (so it acts) and answers the injected status instead
of the real response: the "response lost after the server acted" case. `proxy.requests` records
every request seen (method, target, headers, body), so tests can count attempts and check that the
retries of one call carried the same `x-request-id`.

Use the `fault_proxy` fixture (import `fault_proxy_fixture` into the test module); it fronts the
session `backend` and is reset per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

HEAD_LIMIT = 64 * 1024


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Rule:
    pattern: re.Pattern[str]
    method: str | None
    times: int | None
    # One of: "fail", "cut", "delay".
    action: str
    status: int = 503
    retry_after: str | None = None
    should_retry: bool | None = None  # sent as `x-should-retry` when set
    forward: bool = False
    message: str = "injected by faultproxy"
    after_bytes: int = 0
    after_first_event: bool = False
    after_first_line: bool = False
    seconds: float = 0.0
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method != method:
            return False
        return self.pattern.search(target) is not None


@dataclass
class FaultProxy:
    upstream: str
    url: str = ""
    requests: list[SeenRequest] = field(default_factory=list)
    _rules: list[Rule] = field(default_factory=list)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None

    # --- the API tests use --------------------------------------------------------------------

    def fail(
        self,
        path: str,
        *,
        status: int = 503,
        times: int | None = 1,
        method: str | None = None,
        retry_after: float | str | None = None,
        should_retry: bool | None = None,
        forward: bool = False,
        message: str = "injected by faultproxy",
    ) -> Rule:
        """Answer `status` (with `Retry-After` and `x-should-retry` if given) to the next `times` matching requests."""
        ra = None if retry_after is None else (retry_after if isinstance(retry_after, str) else f"{retry_after:g}")
        return self._add(Rule(re.compile(path), method, times, "fail", status=status, retry_after=ra,
                              should_retry=should_retry, forward=forward, message=message))

    def cut(
        self,
        path: str,
        *,
        after_bytes: int,
        after_first_event: bool = False,
        after_first_line: bool = False,
        times: int | None = None,
        method: str | None = None,
    ) -> Rule:
        """Close the connection after `after_bytes` bytes of the response (headers included).

        With `after_first_event`, the bytes count from the end of the first server-sent event
        (the first blank line of the body): every connection then delivers at least one whole
        event before the cut lands, so a stream whose events outgrow `after_bytes` still
        progresses, and the cut still falls mid-event. `after_first_line` does the same for a
        body of JSON lines (counting from the end of the first line ending in `}`).
        """
        return self._add(Rule(re.compile(path), method, times, "cut", after_bytes=after_bytes,
                              after_first_event=after_first_event, after_first_line=after_first_line))

    def delay(self, path: str, *, seconds: float, times: int | None = 1, method: str | None = None) -> Rule:
        """Hold the matching requests for `seconds` before forwarding them."""
        return self._add(Rule(re.compile(path), method, times, "delay", seconds=seconds))

    def clear(self) -> None:
        """Drop every rule and the request log."""
        with self._lock:
            self._rules.clear()
            self.requests.clear()

    def seen(self, path: str, method: str | None = None) -> list[SeenRequest]:
        """The requests so far whose target matches the regex `path` (and `method`)."""
        rx = re.compile(path)
        with self._lock:
            return [r for r in self.requests if rx.search(r.target) and (method is None or r.method == method)]

    @contextlib.contextmanager
    def counting(self) -> Iterator[list[SeenRequest]]:
        """The requests sent while the block runs (the list is filled when it ends): how many API
        requests one tool call makes, counted rather than timed."""
        with self._lock:
            first = len(self.requests)
        made: list[SeenRequest] = []
        yield made
        with self._lock:
            made.extend(self.requests[first:])

    def wait_seen(self, path: str, count: int, timeout: float = 30.0) -> list[SeenRequest]:
        """Block until `count` requests matching `path` were seen (TimeoutError after `timeout`).

        Blocking: from async code call it as `await anyio.to_thread.run_sync(proxy.wait_seen, ...)`.
        """
        rx = re.compile(path)
        with self._lock:
            if not self._lock.wait_for(lambda: sum(1 for r in self.requests if rx.search(r.target)) >= count, timeout):
                raise TimeoutError(f"saw fewer than {count} requests matching {path!r} within {timeout:g} s")
            return [r for r in self.requests if rx.search(r.target)]

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Close the listener, end open connections, and stop the proxy's thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)

    # --- internals ----------------------------------------------------------------------------

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def _take(self, method: str, target: str) -> list[Rule]:
        """The rules that apply to this request (at most one per action), counted as hit."""
        chosen: dict[str, Rule] = {}
        with self._lock:
            for rule in self._rules:
                if rule.action not in chosen and rule.matches(method, target):
                    rule.hits += 1
                    chosen[rule.action] = rule
        return list(chosen.values())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        raw_headers: list[str] = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
            if name.strip().lower() not in ("connection", "keep-alive"):
                raw_headers.append(line)
        body = await self._read_body(reader, headers)
        with self._lock:
            self.requests.append(SeenRequest(method, target, headers, body))
            self._lock.notify_all()
        rules = {r.action: r for r in self._take(method, target)}

        if "delay" in rules:
            await asyncio.sleep(rules["delay"].seconds)
        fail = rules.get("fail")
        if fail is not None and not fail.forward:
            await self._answer(writer, fail)
            return

        up = urlsplit(self.upstream)
        up_reader, up_writer = await asyncio.open_connection(up.hostname, up.port)
        if headers.get("upgrade", "").lower() == "websocket":
            await self._tunnel(lines[0], raw_headers, reader, writer, up_reader, up_writer)
            return
        try:
            request = "\r\n".join([lines[0], *raw_headers, "Connection: close", "", ""]).encode("latin-1") + body
            up_writer.write(request)
            await up_writer.drain()
            if fail is not None:
                # Let the upstream act fully, then lose its answer.
                while await up_reader.read(65536):
                    pass
                await self._answer(writer, fail)
                return
            cut = rules.get("cut")
            # Absolute response position from which `after_bytes` count; None until found.
            start: int | None = None if cut is not None and (cut.after_first_event or cut.after_first_line) else 0
            seen = bytearray()
            sent = 0
            while True:
                data = await up_reader.read(65536)
                if not data:
                    break
                if cut is not None:
                    if start is None:
                        seen += data
                        body_at = seen.find(b"\r\n\r\n")
                        end = b"}\n" if cut.after_first_line else b"\n\n"
                        blank = seen.find(end, body_at + 4) if body_at >= 0 else -1
                        if blank >= 0:
                            start = blank + 2
                    if start is not None and sent + len(data) >= start + cut.after_bytes:
                        writer.write(data[: start + cut.after_bytes - sent])
                        await writer.drain()
                        writer.transport.abort()
                        return
                writer.write(data)
                await writer.drain()
                sent += len(data)
        finally:
            up_writer.close()

    async def _tunnel(
        self, request_line: str, raw_headers: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
    ) -> None:
        """A WebSocket upgrade (recorded like any request): forwarded as is, then bytes piped both ways."""
        up_writer.write("\r\n".join([request_line, *raw_headers, "Connection: Upgrade", "", ""]).encode("latin-1"))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(Exception):
                sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                out += size_line
                size = int(size_line.split(b";")[0].strip(), 16)
                out += await reader.readexactly(size + 2)
                if size == 0:
                    return bytes(out)
        return b""

    async def _answer(self, writer: asyncio.StreamWriter, rule: Rule) -> None:
        body = json.dumps({"message": rule.message}).encode()
        extra = f"Retry-After: {rule.retry_after}\r\n" if rule.retry_after is not None else ""
        if rule.should_retry is not None:
            extra += f"x-should-retry: {str(rule.should_retry).lower()}\r\n"
        head = (
            f"HTTP/1.1 {rule.status} Injected\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()


@contextlib.contextmanager
def running_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(name="fault_proxy")
def fault_proxy_fixture(backend) -> Iterator[FaultProxy]:  # noqa: ANN001 - the conftest `backend` fixture
    """A fault proxy in front of the session backend; `fault_proxy.url` is the base URL to use."""
    with running_proxy(backend.base_url) as proxy:
        yield proxy
