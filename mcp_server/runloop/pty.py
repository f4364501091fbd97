"""Reaching a devbox's PTY sessions: where the PTY paths are served, and the WebSocket data plane.

`POST /v1/devboxes/{id}/create_pty_tunnel` answers a `tunnel_key` and an `auth_token`; the PTY
paths (`GET /pty/{name}`, `POST /pty/{name}/control`, and the WebSocket at the `connect_url` the
first returns) are then served at a base URL the key routes, with `Authorization: Bearer
{auth_token}`. Where that base URL is depends on the deployment, so it is a template:

- Runloop's cloud serves them on its tunnel host, port 13 (the devbox's REST port; Runloop's
  own SDK and CLI build `https://13-{tunnel_key}.tunnel.{domain}`, the domain being the API
  host's without `api.`): `CLOUD_PTY_URL`, the default.
- The embedded backend serves them on the API itself under `/tunnel/{tunnel_key}`
  (`EMBEDDED_PTY_URL`; `{api}` is the client's API base URL).

A client given no template uses the cloud's for an API host named `api.*` (Runloop's cloud and
its other deployments) and the embedded backend's for any other (loopback, a placeholder).

The WebSocket goes to the origin that answered the bootstrap `GET` (a transport may aim requests
at a backend whose address is only known per request), at `connect_url`: a server-relative path,
under the base URL's path prefix unless it already starts with it. Frames carry raw bytes both
ways. The token is sent in a header, never in the URL, and never shown in a repr or an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import anyio
import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .errors import PtyDisconnected, redact

CLOUD_PTY_URL = "https://13-{tunnel_key}.tunnel.{domain}"
EMBEDDED_PTY_URL = "{api}/tunnel/{tunnel_key}"
# The PTY service's normal close (the shell exited, or the session was closed).
NORMAL_CLOSE_CODES = frozenset({1000, 4000})
# A frame bigger than this is refused (the server sends output in small frames).
MAX_FRAME_BYTES = 1 << 20


@dataclass(frozen=True)
class PtyEndpoint:
    """Where one devbox's PTY paths are served, and the token they require."""

    base_url: str
    auth_token: str = field(repr=False)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    @property
    def headers(self) -> dict[str, str]:
        # The API spec names Authorization; Runloop's Python SDK documents the second header.
        bearer = f"Bearer {self.auth_token}"
        return {"Authorization": bearer, "X-Runloop-Tunnel-Authorization": bearer}


def default_pty_url(api_base_url: str) -> str:
    host = urlsplit(api_base_url).hostname or ""
    return CLOUD_PTY_URL if host.startswith("api.") else EMBEDDED_PTY_URL


def pty_base_url(template: str, api_base_url: str, tunnel_key: str) -> str:
    """The base URL of the PTY paths for `tunnel_key` (see the module docstring for `template`)."""
    host = urlsplit(api_base_url).hostname or ""
    domain = host[4:] if host.startswith("api.") else host
    return template.format(api=api_base_url.rstrip("/"), tunnel_key=quote(tunnel_key, safe=""), domain=domain)


def session_path(session_name: str, suffix: str = "") -> str:
    return f"/pty/{quote(session_name, safe='')}{suffix}"


def websocket_url(answered: httpx.URL, base_url: str, connect_url: str) -> str:
    """The WebSocket URL of `connect_url`, on the origin that answered the bootstrap (`answered`)."""
    prefix = urlsplit(base_url).path.rstrip("/")
    path = connect_url if connect_url.startswith(prefix + "/") or not prefix else prefix + connect_url
    scheme = "wss" if answered.scheme == "https" else "ws"
    return f"{scheme}://{answered.netloc.decode('ascii')}{path}"


class PtySocket:
    """One attached PTY WebSocket: raw bytes in, raw bytes out."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._first: bytes | None = None  # a message read early by `refused`

    @classmethod
    async def open(cls, url: str, endpoint: PtyEndpoint, *, open_seconds: float = 15.0) -> PtySocket:
        try:
            connection = await connect(
                url,
                additional_headers=endpoint.headers,
                open_timeout=open_seconds,
                compression=None,  # terminal bytes are small and latency-bound
                max_size=MAX_FRAME_BYTES,
                proxy=None,
                ping_interval=20,
                user_agent_header="devbox-mcp/0.1",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = redact(exc.response.body.decode("utf-8", "replace")[:300], endpoint.auth_token) if exc.response.body else ""
            raise PtyDisconnected(
                f"the PTY WebSocket was refused: HTTP {status}{': ' + body if body else ''}", status=status
            ) from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            reason = redact(str(exc) or type(exc).__name__, endpoint.auth_token)
            raise PtyDisconnected(f"could not open the PTY WebSocket: {reason}") from None
        return cls(connection)

    async def send(self, data: bytes) -> None:
        try:
            await self._connection.send(data)
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    async def refused(self, seconds: float) -> PtyDisconnected | None:
        """The server's refusal if it closes the connection within `seconds` of the upgrade before
        sending anything (a PTY service refuses a second client that way); else None."""
        try:
            with anyio.move_on_after(seconds):
                self._first = await self.receive()
                if self._first is None:
                    return PtyDisconnected("the PTY WebSocket closed at once (the session ended)", code=1000)
        except PtyDisconnected as exc:
            return exc
        return None

    async def receive(self) -> bytes | None:
        """The next bytes from the terminal, or None once the server closed normally."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            message = await self._connection.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code in NORMAL_CLOSE_CODES:
                return None
            raise self._closed(exc) from None
        return message.encode() if isinstance(message, str) else bytes(message)

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    async def aclose(self) -> None:
        await self._connection.close()

    @staticmethod
    def _closed(exc: ConnectionClosed) -> PtyDisconnected:
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        what = f"code {code}" + (f": {reason}" if reason else "") if code is not None else "without a close frame"
        return PtyDisconnected(f"the PTY WebSocket closed ({what})", code=code)
