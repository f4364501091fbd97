"""The checks every HTTP request passes before it reaches MCP: Host/Origin, bearer token, body size.

They sit in front of the SDK's transport (rather than inside it) so a request from a rebinding
page is turned away before auth looks at it, so the 401 can name the protected-resource
metadata built from an already-validated Host, and so every refusal says what to do about it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from ..net import url_host

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
# Names a token might travel under in a URL; any of them is refused (URLs end up in logs).
QUERY_TOKEN_NAMES = ("access_token", "token", "auth", "authorization", "api_key", "key")


def is_loopback(host: str) -> bool:
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class OriginPolicy:
    """Which `Host` and `Origin` headers are accepted (DNS-rebinding protection).

    A pattern `name:*` accepts any port; `*` alone accepts anything (for a trusted proxy that
    already checks). A missing `Origin` is accepted: non-browser clients do not send one.
    """

    hosts: tuple[str, ...]
    origins: tuple[str, ...]

    @classmethod
    def for_bind(cls, bind_host: str, extra_hosts: Iterable[str] = (), extra_origins: Iterable[str] = ()) -> OriginPolicy:
        names = list(LOOPBACK_NAMES)
        if bind_host not in ("0.0.0.0", "::", "") and url_host(bind_host) not in names:
            names.append(url_host(bind_host))
        hosts = [p for n in names for p in (n, f"{n}:*")] + list(extra_hosts)
        origins = [p for n in names for p in (f"http://{n}", f"http://{n}:*")] + list(extra_origins)
        return cls(tuple(hosts), tuple(origins))

    def host_ok(self, host: str | None) -> bool:
        return host is not None and _matches(host.lower(), self.hosts)

    def origin_ok(self, origin: str | None) -> bool:
        return origin is None or _matches(origin.lower().rstrip("/"), self.origins)


def _matches(value: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        pattern = pattern.lower().rstrip("/")
        if pattern == "*" or value == pattern:
            return True
        if pattern.endswith(":*"):
            base, _, port = value.rpartition(":")
            if base == pattern[:-2] and port.isdigit():
                return True
    return False


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:80] + "..."


async def send_json(send: Send, status: int, body: object, extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def send_rpc_error(send: Send, status: int, message: str) -> None:
    """A JSON-RPC error body: MCP clients on `/mcp` can show it as they show any other error."""
    await send_json(send, status, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}})


async def refuse_origin(scope: Scope, send: Send, policy: OriginPolicy) -> bool:
    """421 for a foreign Host, 403 for a foreign Origin; True when the request was refused."""
    host = header(scope, b"host")
    if not policy.host_ok(host):
        await send_rpc_error(
            send,
            421,
            f"Host header {_shown(host or '')!r} is not allowed (DNS-rebinding protection); "
            "if clients reach this server under that name, start it with --allowed-host NAME",
        )
        return True
    origin = header(scope, b"origin")
    if not policy.origin_ok(origin):
        await send_rpc_error(
            send,
            403,
            f"Origin {_shown(origin or '')!r} is not allowed (DNS-rebinding protection); "
            "to let a web page at that origin call this server, start it with --allowed-origin ORIGIN",
        )
        return True
    return False


def base_url(scope: Scope) -> str:
    return f"{scope.get('scheme', 'http')}://{header(scope, b'host') or 'localhost'}"


def resource_metadata_url(scope: Scope, mcp_path: str) -> str:
    return base_url(scope) + RESOURCE_METADATA_PATH + mcp_path


def resource_metadata(scope: Scope, mcp_path: str) -> dict[str, object]:
    """RFC 9728 metadata for the static bearer token: no authorization server issues it."""
    return {
        "resource": base_url(scope) + mcp_path,
        "bearer_methods_supported": ["header"],
        "resource_name": "devbox-mcp",
    }


async def refuse_unauthenticated(scope: Scope, send: Send, token: str, mcp_path: str) -> bool:
    """401 (with `WWW-Authenticate` naming the resource metadata) unless the bearer token matches.

    A token in the query string never authenticates and is refused outright: URLs are logged by
    proxies and shells, so accepting it would teach clients to leak it.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if any(name in query for name in QUERY_TOKEN_NAMES):
        description = "credentials in the URL are not accepted; send 'Authorization: Bearer <token>' instead"
        await _send_401(scope, send, mcp_path, "invalid_request", description)
        return True
    got = header(scope, b"authorization")
    if got is None:
        description = "missing bearer token: send 'Authorization: Bearer <token>' with the token devbox-mcp printed at start-up (or DEVBOX_MCP_TOKEN)"
        await _send_401(scope, send, mcp_path, None, description)
        return True
    scheme, _, presented = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        description = "wrong bearer token: use the token devbox-mcp printed at start-up (or the value of DEVBOX_MCP_TOKEN)"
        await _send_401(scope, send, mcp_path, "invalid_token", description)
        return True
    return False


async def _send_401(scope: Scope, send: Send, mcp_path: str, error: str | None, description: str) -> None:
    challenge = f'Bearer realm="devbox-mcp", resource_metadata="{resource_metadata_url(scope, mcp_path)}"'
    if error:
        challenge += f', error="{error}", error_description="{description}"'
    body = {"error": error or "unauthorized", "error_description": description}
    await send_json(send, 401, body, [(b"www-authenticate", challenge.encode())])


class BodyTooLarge(Exception):
    pass


async def read_limited_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, or `BodyTooLarge` as soon as it (or its Content-Length) passes `limit`."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared))
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise BodyTooLarge(len(body))
        if not message.get("more_body", False):
            return bytes(body)


def replay_body(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
