"""The tunnel proxy: HTTP from the host to a port inside a devbox, on a port of its own.

Two address forms reach port P of the devbox whose tunnel key is K:

- host form: `http://P-K.localhost:<proxy port>/path` (browsers resolve `*.localhost` to
  loopback; any domain whose first label is `P-K` works the same);
- path form: `http://127.0.0.1:<proxy port>/tunnel/P-K/path`, for clients that cannot choose a
  host name. The prefix is removed before forwarding, and such a connection carries one request
  (the proxy asks the server to close after it), since later requests on it would keep the prefix.

The proxy reads the first request head of a connection, routes and checks it, connects to the
port inside the devbox (its own network namespace, `netns.py`, or the host's for `host` mode),
sends the head on, and from then on copies bytes both ways until either side is done. So
keep-alive, chunked and streamed responses, Server-Sent Events and WebSocket upgrades all pass
through unchanged, and the proxy holds at most one chunk per direction in memory.

Checks, each answered with a one-line text/plain body and `Connection: close`:
400 a head it cannot parse; 404 no tunnel with that key; 401 an `authenticated` tunnel without
`Authorization: Bearer <auth_token>` (checked on the connection's first request; the header is
passed on unchanged: it is the devbox's own tunnel credential, and the app may ignore it); 502
the devbox is not running (unless the tunnel wakes it: then the request waits for the resume),
nothing listens on the port, or the namespace cannot be entered.

Tunnel traffic of a tunnel with `http_keep_alive` is use of the devbox for its idle and
keep-alive timers (at most one touch a second per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..net import listen
from .devboxes import Devbox, DevboxManager, not_running_message
from .errors import ApiError
from .netns import NamespaceSockets, NamespaceUnavailable, shares_host_network
from .tunnels import PATH_PREFIX, split_label, wakes_on_http

log = logging.getLogger("devbox_mcp.local")

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0
CHUNK_BYTES = 256 * 1024
WAKE_SECONDS = 60.0  # how long a request waits for a woken devbox to run
READY_SECONDS = 15.0  # and then for its server to listen again (refused connections are retried)
CONNECT_SECONDS = 10.0
TOUCH_EVERY_SECONDS = 1.0
_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 502: "Bad Gateway"}


class ProxyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    raw: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), None)


def parse_head(raw: bytes) -> RequestHead:
    try:
        text = raw.decode("latin-1")
        line, *lines = text.split("\r\n")
        method, target, version = line.split(" ")
        headers = []
        for header in lines:
            if header:
                key, _, value = header.partition(":")
                headers.append((key.strip(), value.strip()))
    except ValueError:
        raise ProxyError(400, "malformed HTTP request") from None
    if not version.startswith("HTTP/1."):
        raise ProxyError(400, f"unsupported protocol {version!r}; the tunnel speaks HTTP/1.x")
    return RequestHead(method, target, version, headers, raw)


@dataclass(frozen=True)
class Route:
    port: int
    key: str
    forward_target: str | None  # the path form's target without its prefix; None: the host form


def route(head: RequestHead) -> Route:
    """Which devbox port a request is for: the path form first, then the Host header's first label."""
    if head.target.startswith(PATH_PREFIX):
        label, slash, rest = head.target[len(PATH_PREFIX):].partition("/")
        label, query, tail = label.partition("?")
        parsed = split_label(label)
        if parsed is not None:
            if not slash:  # `/tunnel/P-K`: relative links need the slash
                raise ProxyError(308, f"{PATH_PREFIX}{label}/{query}{tail}")
            return Route(*parsed, "/" + rest)
    host = head.header("host") or ""
    name = "" if host.startswith("[") else host.rsplit(":", 1)[0]  # an IPv6 literal is no tunnel name
    parsed = split_label(name.split(".", 1)[0].lower())
    if parsed is None:
        raise ProxyError(
            404,
            "not a tunnel address: use http://{port}-{tunnel_key}.localhost:<this port>/ "
            f"or http://<this host:port>{PATH_PREFIX}{{port}}-{{tunnel_key}}/",
        )
    return Route(*parsed, None)


def forward_head(head: RequestHead, target: str) -> bytes:
    """The head for the path form: the prefix gone, and one request per connection unless it upgrades."""
    upgrade = "upgrade" in (head.header("connection") or "").lower() and head.header("upgrade")
    skip = () if upgrade else ("connection", "keep-alive")
    lines = [f"{head.method} {target} {head.version}"]
    lines += [f"{key}: {value}" for key, value in head.headers if key.lower() not in skip]
    if not upgrade:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing(response_head: bytes) -> bytes:
    """A response head that tells the client the connection ends with it (an upgrade's stays as is)."""
    lines = response_head.decode("latin-1").split("\r\n")
    if lines[0][9:12] == "101":
        return response_head
    kept = [line for line in lines if line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
    return ("\r\n".join(kept[:-2]) + "\r\nConnection: close\r\n\r\n").encode("latin-1")


def error_response(status: int, message: str, extra: str = "") -> bytes:
    if status == 308:
        return f"HTTP/1.1 308 Permanent Redirect\r\nLocation: {message}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    body = (message + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class TunnelProxy:
    """Serves every tunnel of one backend on one listening socket."""

    def __init__(self, devboxes: DevboxManager, host: str, port: int) -> None:
        self.devboxes = devboxes
        self._sock = listen(host, port)
        self.port = self._sock.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._namespaces: dict[str, tuple[int, NamespaceSockets]] = {}  # devbox id -> (sandbox pid, its thread)
        self._connections: set[asyncio.Task[None]] = set()
        devboxes.on_stop.append(self._forget)

    @property
    def origin(self) -> str:
        """What `url_template` builds on: `localhost`, whose subdomains browsers send to loopback."""
        return f"http://localhost:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self._sock, limit=MAX_HEAD_BYTES)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(BaseException):
                await task
        for _, sockets in self._namespaces.values():
            sockets.close()
        self._namespaces.clear()

    async def _forget(self, devbox_id: str) -> None:
        """The devbox's sandbox stops: its namespace thread goes (and no longer holds the namespace)."""
        entry = self._namespaces.pop(devbox_id, None)
        if entry is not None:
            entry[1].close()

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                head = await self._read_head(reader)
                devbox, (upstream_reader, upstream), data, one_request = await self._open(head)
            except ProxyError as exc:
                extra = 'WWW-Authenticate: Bearer realm="devbox tunnel"\r\n' if exc.status == 401 else ""
                writer.write(error_response(exc.status, exc.message, extra))
                await writer.drain()
                return
            upstream.write(data)
            if one_request:  # the path form: the client must not reuse the connection
                writer.write(closing(await upstream_reader.readuntil(b"\r\n\r\n")))
            touch = self._toucher(devbox)
            await self._relay(reader, writer, upstream_reader, upstream, touch)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # either side went away, or the app's response head was too large: the connection ends
        finally:
            self._connections.discard(task)
            for w in (upstream, writer):
                if w is not None:
                    w.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> RequestHead:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SECONDS)
        except asyncio.LimitOverrunError:
            raise ProxyError(400, f"request head larger than {MAX_HEAD_BYTES} bytes") from None
        return parse_head(raw[:-4])

    async def _open(
        self, head: RequestHead
    ) -> tuple[Devbox, tuple[asyncio.StreamReader, asyncio.StreamWriter], bytes, bool]:
        """Route and check the request, wake the devbox if need be, connect: (devbox, upstream, head
        to send, whether the connection carries this one request only)."""
        where = route(head)
        devbox = self.devboxes.by_tunnel_key(where.key)
        if devbox is None or devbox.tunnel is None:
            raise ProxyError(404, f"no tunnel has the key {where.key!r}; enable one with enable_tunnel")
        tunnel = devbox.tunnel
        if tunnel["auth_mode"] == "authenticated":
            scheme, _, token = (head.header("authorization") or "").partition(" ")
            expected = str(tunnel["auth_token"]).encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                raise ProxyError(401, "this tunnel is authenticated: send 'Authorization: Bearer <auth_token>'")
        woken = await self._wake_if_asked(devbox)
        upstream = await self._connect(devbox, where.port, retry_seconds=READY_SECONDS if woken else 0.0)
        if where.forward_target is None:
            return devbox, upstream, head.raw + b"\r\n\r\n", False
        return devbox, upstream, forward_head(head, where.forward_target), True

    async def _wake_if_asked(self, devbox: Devbox) -> bool:
        """Resume a suspended devbox whose tunnel wakes it, and wait until it runs; whether it was woken."""
        if devbox.status == "running":
            return False
        if devbox.tunnel is None or not wakes_on_http(devbox.tunnel, devbox.launch_parameters) or devbox.status not in (
            "suspended", "suspending", "resuming"
        ):  # fmt: skip
            raise ProxyError(502, not_running_message(devbox))
        if devbox.status == "suspending":
            await self._wait_running(devbox, ("suspended",))
        if devbox.status == "suspended":
            with contextlib.suppress(ApiError):  # another request resumed it first
                await self.devboxes.resume(devbox.id)
        await self._wait_running(devbox, ("running",))
        return True

    async def _wait_running(self, devbox: Devbox, statuses: tuple[str, ...]) -> None:
        try:
            await self.devboxes.wait_for_status(devbox.id, (*statuses, "failure", "shutdown"), WAKE_SECONDS)
        except ApiError:
            raise ProxyError(502, f"devbox {devbox.id} did not resume within {WAKE_SECONDS:g} s") from None
        if devbox.status not in (*statuses, "running"):
            raise ProxyError(502, not_running_message(devbox))

    async def _connect(
        self, devbox: Devbox, port: int, retry_seconds: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to `port` on the devbox's loopback (IPv4, then IPv6); 502 when nothing listens."""
        deadline = time.monotonic() + retry_seconds
        while True:
            for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
                sock = await self._socket(devbox, family)
                try:
                    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), CONNECT_SECONDS)
                except (OSError, TimeoutError):
                    sock.close()
                    continue
                return await asyncio.open_connection(sock=sock, limit=CHUNK_BYTES)
            if time.monotonic() >= deadline:
                raise ProxyError(502, f"nothing is listening on port {port} in devbox {devbox.id}")
            await asyncio.sleep(0.1)  # a woken devbox's server is starting: try again shortly

    async def _socket(self, devbox: Devbox, family: int) -> socket.socket:
        sandbox = devbox.sandbox
        pid = sandbox.init_pid if sandbox is not None else None
        if sandbox is None or not sandbox.alive:
            raise ProxyError(502, not_running_message(devbox))
        if pid is None or shares_host_network(pid):  # unsafe or `host` mode: the host's own loopback
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setblocking(False)
            return sock
        entry = self._namespaces.get(devbox.id)
        if entry is None or entry[0] != pid:
            if entry is not None:
                entry[1].close()
            try:
                entry = self._namespaces[devbox.id] = (pid, NamespaceSockets(pid))
            except NamespaceUnavailable as exc:
                raise ProxyError(502, f"devbox {devbox.id}: {exc}") from None
        try:
            return await entry[1].socket(family)
        except NamespaceUnavailable as exc:
            raise ProxyError(502, f"devbox {devbox.id}: {exc}") from None

    def _toucher(self, devbox: Devbox) -> Callable[[], None]:
        """What counts a chunk of traffic as use of the devbox (nothing, without http_keep_alive)."""
        if not (devbox.tunnel or {}).get("http_keep_alive"):
            return lambda: None
        last = [0.0]

        def touch() -> None:
            now = time.monotonic()
            if now - last[0] >= TOUCH_EVERY_SECONDS:
                last[0] = now
                self.devboxes.keep_alive(devbox.id)

        touch()
        return touch

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
        touch: Callable[[], None],
    ) -> None:
        """Copy both ways; the connection is done when the server's side ends (a client that only
        half-closes still gets the rest of its response)."""

        async def up() -> None:
            await _copy(client_reader, upstream, touch)
            if upstream.can_write_eof():
                upstream.write_eof()

        sending = asyncio.ensure_future(up())
        try:
            await _copy(upstream_reader, client, touch)
        finally:
            sending.cancel()
            with contextlib.suppress(BaseException):
                await sending


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter, touch: Callable[[], None]) -> None:
    while data := await source.read(CHUNK_BYTES):
        sink.write(data)
        touch()
        await sink.drain()
