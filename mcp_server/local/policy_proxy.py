"""The filtering HTTP(S) proxy of devboxes under a network policy with a hostname allowlist.

Such a devbox has no slirp4netns: its network namespace holds only its loopback, so every direct
connection fails at once ("Network is unreachable"). The backend opens a listening socket *inside*
that namespace, on 127.0.0.1:PROXY_PORT (a thread enters the namespace, makes the socket and leaves;
the socket stays bound there), and serves it here, on the backend's side, where the devbox has
no power: root inside cannot stop, replace or bypass it (the port is taken; there is no route out).
Commands get `http_proxy`, `https_proxy` and their upper-case spellings pointing at it.

Each connection is one request: `CONNECT host:port` (HTTPS and anything tunnelled), where the TLS
ClientHello's server name must be the same host, or a plain `GET http://host/...`, whose Host header
must name the same host. The host must be allowed by the policy *at that moment* (so an update
reaches running devboxes at once), and every address it resolves to must be public (egress.py):
an allowed name pointing at the metadata endpoint or the LAN is refused too.
A refusal is a `403` with one line saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .egress import host_addresses, is_blocked
from .policy_store import NetworkPolicy

log = logging.getLogger("devbox_mcp.local")

PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
MAX_HEAD = 64 * 1024
_CLONE_NEWNET = 0x40000000


def proxy_environment() -> dict[str, str]:
    """What a command of a devbox under a hostname policy gets (curl reads only the lower-case http_proxy)."""
    no_proxy = "localhost,127.0.0.1,::1"
    return {
        "http_proxy": PROXY_URL, "https_proxy": PROXY_URL, "HTTP_PROXY": PROXY_URL, "HTTPS_PROXY": PROXY_URL,
        "no_proxy": no_proxy, "NO_PROXY": no_proxy,
    }  # fmt: skip


def listen_in(netns_path: str) -> socket.socket:
    """A socket listening on 127.0.0.1:PROXY_PORT inside the network namespace at `netns_path`."""
    made: dict[str, object] = {}

    def make() -> None:  # on a thread of its own: setns moves only the calling thread
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"cannot enter the devbox's network namespace ({netns_path})")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", PROXY_PORT))
            sock.listen(128)
            sock.setblocking(False)
            made["sock"] = sock
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make, name="devbox-proxy-listen")
    thread.start()
    thread.join()  # the thread ends in the devbox's namespace, and with it that namespace membership
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["sock"]  # type: ignore[return-value]


async def _first_record(reader: asyncio.StreamReader) -> bytes:
    """The client's first bytes after CONNECT: a whole TLS record when it is one (so a ClientHello
    split over several packets is read whole before its server name is checked)."""
    first = await reader.read(5)
    if len(first) == 5 and first[0] == 0x16:
        size = int.from_bytes(first[3:5], "big")
        first += await reader.readexactly(min(size, 16384 + 2048))
    return first


def sni_of(hello: bytes) -> str | None:
    """The server name of a TLS ClientHello record, or None (not a handshake, or no name in it).

    ValueError for a handshake record it cannot read: refused, never let through unchecked."""
    if hello[:1] != b"\x16":
        return None
    try:
        if hello[5] != 0x01:
            raise ValueError("not a ClientHello")
        pos = 9 + 2 + 32  # record header, handshake header, version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
        if end > len(hello):
            raise IndexError(end)
        pos += 2
        while pos + 4 <= end:
            kind, size = int.from_bytes(hello[pos : pos + 2], "big"), int.from_bytes(hello[pos + 2 : pos + 4], "big")
            if kind == 0:  # server_name: list length (2), type (1), name length (2), name
                name_len = int.from_bytes(hello[pos + 7 : pos + 9], "big")
                if pos + 9 + name_len > end:
                    raise IndexError(name_len)
                return hello[pos + 9 : pos + 9 + name_len].decode("ascii").lower()
            pos += 4 + size
    except (IndexError, UnicodeDecodeError):
        raise ValueError("a truncated ClientHello") from None
    return None


class Refused(Exception):
    """A request the policy does not allow; the message is the one line the client sees."""


@dataclass
class PolicyProxy:
    """Serves the proxy of every devbox under a hostname policy: `attach` at its start, `detach` at its stop."""

    policy_of: Callable[[str], NetworkPolicy | None]  # devbox id -> its policy now
    _servers: dict[str, asyncio.Server] = field(default_factory=dict)
    _host: list[str] = field(default_factory=list)

    async def attach(self, devbox_id: str, init_pid: int) -> None:
        await self.detach(devbox_id)
        sock = await asyncio.to_thread(listen_in, f"/proc/{init_pid}/ns/net")
        self._host = await asyncio.to_thread(host_addresses)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(devbox_id, reader, writer)

        self._servers[devbox_id] = await asyncio.start_server(handle, sock=sock, limit=MAX_HEAD)

    async def detach(self, devbox_id: str) -> None:
        server = self._servers.pop(devbox_id, None)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def close(self) -> None:
        for devbox_id in list(self._servers):
            await self.detach(devbox_id)

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, devbox_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            target = rest.rpartition(" ")[0]
            try:
                if method.upper() == "CONNECT":
                    host, port = _split_host_port(target, 443)
                    up_reader, upstream = await self._open(devbox_id, host, port)
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    first = await asyncio.wait_for(_first_record(reader), 60)
                    try:
                        name = sni_of(first)
                    except ValueError:
                        raise Refused("the TLS ClientHello could not be read") from None
                    if name is not None and name != host:
                        raise Refused(f"the TLS server name {name!r} is not the CONNECT host {host!r}")
                    upstream.write(first)
                else:
                    host, port, path = _absolute(target)
                    headers = [line for line in lines[1:] if line]
                    named = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("host:")), "")
                    if named and _split_host_port(named, port)[0] != host:
                        raise Refused(f"the Host header {named!r} is not the request's host {host!r}")
                    up_reader, upstream = await self._open(devbox_id, host, port)
                    kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))]
                    request = [f"{method} {path} {lines[0].rpartition(' ')[2]}", *kept, "Connection: close", "", ""]
                    upstream.write("\r\n".join(request).encode("latin-1"))
            except Refused as exc:
                if upstream is None:  # before the tunnel was answered: a proper 403
                    body = f"devbox network policy: {exc}\n".encode()
                    writer.write(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
                return
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (ConnectionError, OSError, TimeoutError):
            return
        finally:
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _open(self, devbox_id: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        policy = self.policy_of(devbox_id)
        if policy is None or not policy.allows(host):
            raise Refused(f"{host} is not in the allowed_hostnames of the devbox's network policy")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Refused(f"{host} does not resolve ({exc.strerror or exc})") from None
        addresses = [info[4][0] for info in infos]
        blocked = [a for a in addresses if is_blocked(a, self._host)]
        if blocked or not addresses:
            raise Refused(f"{host} resolves to {blocked[0] if blocked else 'nothing'}, which is not a public address")
        failure: BaseException | None = None
        for address in dict.fromkeys(addresses):  # in the resolver's order, each once
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), 30)
            except (OSError, TimeoutError) as exc:
                failure = exc
        raise Refused(f"cannot connect to {host}:{port} ({failure})")


def _split_host_port(target: str, default: int) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or "]" in port:
        host, port = target, str(default)
    host = host.strip("[]").rstrip(".").lower()
    try:
        number = int(port)
    except ValueError:
        raise Refused(f"{target!r} has no valid port") from None
    if not host or not 0 < number < 65536:
        raise Refused(f"{target!r} is not host:port")
    return host, number


def _absolute(target: str) -> tuple[str, int, str]:
    """host, port and path of an absolute-form `http://host[:port]/path` request target."""
    if not target.lower().startswith("http://"):
        raise Refused("only CONNECT and http:// requests go through the proxy")
    authority, _, path = target[len("http://") :].partition("/")
    host, port = _split_host_port(authority.rpartition("@")[2], 80)
    return host, port, "/" + path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass
