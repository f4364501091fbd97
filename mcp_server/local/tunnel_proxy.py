"""The tunnel proxy: HTTP from the host to a port inside a devbox, on a port of its own.

Two address forms reach port P of the devbox whose tunnel key is K:

- host form: `http://P-K.localhost:<proxy port>/path` (browsers resolve `*.localhost` to
  loopback; any domain whose first label is `P-K` works the same);
- path form: `http://127.0.0.1:<proxy port>/tunnel/P-K/path`, for clients that cannot choose a
  host name. The prefix is removed before forwarding, and such a connection carries one request
  (the proxy asks the server to close after it), since later requests on it would keep the prefix.

The proxy reads the first request head of a connection, routes and checks it, connects to the
port inside the devbox (its own network namespace, `netns.py`, or the host's for `host` mode),
sends the head on, and from then on copies bytes both ways until the server's side is done. So
keep-alive, chunked and streamed responses, Server-Sent Events and WebSocket upgrades all pass
through unchanged. The copying is asyncio protocols with back-pressure (a side is not read while
its peer has `WRITE_BUFFER_BYTES` unsent): no per-chunk coroutine, and bounded memory per
connection. New routes (another address form, another kind of target) belong in `route`.

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
WRITE_BUFFER_BYTES = 1 << 20  # a side stops being read while its peer has this much not yet sent
WAKE_SECONDS = 60.0  # how long a request waits for a woken devbox to run
READY_SECONDS = 15.0  # and then for its server to listen again (refused connections are retried)
CONNECT_SECONDS = 10.0
TOUCH_EVERY_SECONDS = 1.0
_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 502: "Bad Gateway"}


class ProxyError(Exception):
    """Answered to the client with `status` and the one-line `message`."""

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
            if not slash:  # `/tunnel/P-K`: relative links need the slash (the message is the Location)
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
        self._connections: set[_Client] = set()
        devboxes.on_stop.append(self._forget)

    @property
    def origin(self) -> str:
        """What `url_template` builds on: `localhost`, whose subdomains browsers send to loopback."""
        return f"http://localhost:{self.port}"

    def busy(self) -> bool:
        """Whether a connection is open through a tunnel (the backend's idle watch asks)."""
        return bool(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Client(self), sock=self._sock)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self._sock.close()
        for connection in list(self._connections):
            connection.abort()
        for _, sockets in self._namespaces.values():
            sockets.close()
        self._namespaces.clear()

    async def _forget(self, devbox_id: str) -> None:
        """The devbox's sandbox stops: its namespace thread goes (and no longer holds the namespace)."""
        entry = self._namespaces.pop(devbox_id, None)
        if entry is not None:
            entry[1].close()

    # -- one connection ------------------------------------------------------------------------

    async def _open(self, client: _Client, head: RequestHead) -> None:
        """Route and check the request, wake the devbox if need be, connect, send the head on, and
        let the bytes flow; or answer with the error."""
        try:
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
            sock = await self._connect(devbox, where.port, retry_seconds=READY_SECONDS if woken else 0.0)
        except ProxyError as exc:
            client.fail(exc)
            return
        one_request = where.forward_target is not None
        data = forward_head(head, where.forward_target) if one_request else head.raw + b"\r\n\r\n"
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(
                lambda: _Upstream(client, data, self._toucher(devbox), rewrite_head=one_request), sock=sock
            )
        except asyncio.CancelledError:  # the client left meanwhile
            sock.close()
            raise
        except OSError:
            sock.close()
            client.fail(ProxyError(502, f"the connection to port {where.port} in devbox {devbox.id} failed"))

    async def _wake_if_asked(self, devbox: Devbox) -> bool:
        """Resume a suspended devbox whose tunnel wakes it, and wait until it runs; whether it was woken."""
        if devbox.status == "running":
            return False
        if devbox.tunnel is None or not wakes_on_http(devbox.tunnel, devbox.launch_parameters) or devbox.status not in (
            "suspended", "suspending", "resuming"
        ):  # fmt: skip
            raise ProxyError(502, not_running_message(devbox))
        if devbox.status == "suspending":
            await self._wait_until(devbox, "suspended")
        if devbox.status == "suspended":
            with contextlib.suppress(ApiError):  # another request resumed it first
                await self.devboxes.resume(devbox.id)
        await self._wait_until(devbox, "running")
        return True

    async def _wait_until(self, devbox: Devbox, wanted: str) -> None:
        """Wait until the devbox is `wanted`, or in a state it will not leave by itself (a resume
        that failed leaves it suspended); 502 unless it is `wanted` then."""
        settled = (wanted, "running", "suspended", "failure", "shutdown")
        try:
            await self.devboxes.wait_for_status(devbox.id, settled, WAKE_SECONDS)
        except ApiError:
            raise ProxyError(502, f"devbox {devbox.id} is still {devbox.status} after {WAKE_SECONDS:g} s") from None
        if devbox.status == wanted:
            return
        if wanted == "running" and devbox.status == "suspended":
            raise ProxyError(502, f"devbox {devbox.id} could not resume; its logs say why")
        raise ProxyError(502, not_running_message(devbox))

    async def _connect(self, devbox: Devbox, port: int, retry_seconds: float) -> socket.socket:
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
                return sock
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


class _Client(asyncio.Protocol):
    """A client's connection: its first request head is collected and checked (`TunnelProxy._open`),
    then every byte goes to the devbox's server as it comes, with back-pressure both ways (a side
    whose peer cannot keep up stops being read)."""

    def __init__(self, proxy: TunnelProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.upstream: _Upstream | None = None
        self._buffer = bytearray()
        self._head_seen = False
        self._client_eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        self.proxy._connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_SECONDS, self.abort)

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.send(data)
            return
        self._buffer += data
        if self._head_seen:  # waiting for the devbox: keep it (reading is paused, so this stays small)
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self.fail(ProxyError(400, f"request head larger than {MAX_HEAD_BYTES} bytes"))
            return
        self._head_seen = True
        if self._timer is not None:
            self._timer.cancel()
        assert self.transport is not None
        self.transport.pause_reading()
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        try:
            request = parse_head(head)
        except ProxyError as exc:
            self.fail(exc)
            return
        self._task = asyncio.ensure_future(self.proxy._open(self, request))

    def attach(self, upstream: _Upstream) -> None:
        """The devbox's server is connected and has the head: what came after it follows, then the rest."""
        self.upstream = upstream
        if self._buffer:
            upstream.send(bytes(self._buffer))
            self._buffer.clear()
        if self._client_eof:
            upstream.send_eof()
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        """The client is done sending; it may still be waiting for the rest of its response."""
        self._client_eof = True
        if self.upstream is not None:
            self.upstream.send_eof()
        return True

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.upstream is not None:
            self.upstream.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def fail(self, error: ProxyError) -> None:
        """Answer with the error (one line) and close."""
        if self.transport is None or self.transport.is_closing():
            return
        extra = 'WWW-Authenticate: Bearer realm="devbox tunnel"\r\n' if error.status == 401 else ""
        self.transport.write(error_response(error.status, error.message, extra))
        self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Upstream(asyncio.Protocol):
    """The connection to the port inside the devbox: it gets the head first, and what it sends goes
    to the client. In the path form the response head tells the client to close after it."""

    def __init__(self, client: _Client, head: bytes, touch: Callable[[], None], *, rewrite_head: bool) -> None:
        self.client = client
        self.head = head
        self.touch = touch
        self.rewrite_head = rewrite_head
        self._response = bytearray()
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_BYTES)
        transport.write(self.head)
        if self.client.transport is None or self.client.transport.is_closing():
            transport.close()
            return
        self.client.attach(self)

    def send(self, data: bytes) -> None:
        self.transport.write(data)
        self.touch()

    def send_eof(self) -> None:
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.touch()
        if self.rewrite_head:
            self._response += data
            end = self._response.find(b"\r\n\r\n")
            if end < 0 and len(self._response) <= MAX_HEAD_BYTES:
                return
            self.rewrite_head = False
            data, self._response = bytes(self._response), bytearray()
            if end >= 0:
                data = closing(data[: end + 4]) + data[end + 4 :]
        self.client.send(data)

    def eof_received(self) -> bool:
        """The server is done: so is the connection (the client gets what is buffered first)."""
        if self.client.transport is not None:
            self.client.transport.close()
        return False

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None and not self.client.transport.is_closing():
            self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()
