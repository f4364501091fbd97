"""`RunloopClient`: the async Runloop API client the MCP tools are built on.

One request path (`_send`) applies auth, the idempotency key, the retry policy and the error
mapping to every call. Long-polls (`wait_for_*`) treat 408 as "not yet" and loop until their own
deadline. Streams (`stream_output`, `subscribe_axon`) resume after drops (see `streams.py`).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio
import httpx
from httpx_sse import EventSource, ServerSentEvent
from pydantic import BaseModel, ValidationError

from .config import DEFAULT_BASE_URL, ClientConfig, check_connection
from .errors import (
    ApiStatusError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    FileTooLarge,
    InvalidArgument,
    UnexpectedResponse,
    WaitTimeout,
    error_for_status,
    redact,
)
from .models import (
    DEVBOX_STATUSES,
    PUBLISHABLE_ORIGINS,
    AxonEventListPage,
    AxonEventView,
    AxonListPage,
    AxonView,
    BlueprintListPage,
    BlueprintLogs,
    BlueprintView,
    DevboxListPage,
    DevboxUsage,
    DevboxView,
    ExecutionDetail,
    ExecutionView,
    FileDownload,
    LogEntry,
    NetworkPolicyListPage,
    NetworkPolicyView,
    OutputChunk,
    PtyConnectView,
    PtyControlResultView,
    PtyTunnelView,
    PublishResult,
    SnapshotListPage,
    SnapshotStatus,
    SnapshotView,
    SqlBatchResult,
    SqlResult,
    SqlStatement,
    StdinResult,
    TunnelView,
)
from .pty import PtyEndpoint, PtySocket, default_pty_url, pty_base_url, session_path, websocket_url
from .retry import RetryPolicy, is_retryable_status, parse_retry_after
from .streams import axon_events, output_chunks

log = logging.getLogger("devbox_mcp.runloop")

M = TypeVar("M", bound=BaseModel)

# Server-side holds of the long-poll endpoints (the API's maxima).
DEVBOX_LONG_POLL_SECONDS = 30.0
EXECUTION_LONG_POLL_SECONDS = 25.0
# The read timeout of a long-poll is its hold plus this margin, as the official SDK does.
LONG_POLL_MARGIN_SECONDS = 5.0
DEFAULT_WAIT_SECONDS = 600.0
# File transfers and execute_sync can legitimately take minutes (the SDK's default is 600 s).
SLOW_CALL_SECONDS = 600.0
DEFAULT_DOWNLOAD_MAX_BYTES = 64 * 1024 * 1024
USER_AGENT = "devbox-mcp/0.1"
# Sent by the embedded backend on execute answers: it takes fractions of a second as holds.
SUBSECOND_WAITS_HEADER = "x-devbox-mcp-subsecond-waits"
# Accepted by the embedded backend's execute: the held answer as lines of views (`execute`'s `on_output`).
NDJSON = "application/x-ndjson"
URL_CACHE_SIZE = 512  # request URLs merged with the base URL, kept for their path's next request


class _LinesBroken(Exception):
    """A held execute answer sent as lines broke off (or ended empty) after the command started."""


def new_command_id() -> str:
    """A UUIDv7 (48-bit millisecond time, then random bits): the `command_id` of `execute`."""
    ms = time.time_ns() // 1_000_000
    rand_a = secrets.randbits(12)
    rand_b = secrets.randbits(62)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def new_request_id() -> str:
    """An idempotency key, generated once per logical call and reused by its retries."""
    return f"devbox-mcp-{uuid.uuid4()}"


class RunloopClient:
    """Async client for the Runloop API. Use as `async with RunloopClient(...) as client:`.

    `retry` governs request retries and stream reconnects; `stream_idle_timeout` is how long a
    stream may stay silent (servers send keep-alives) before the client reconnects.
    `subsecond_waits`: the server takes `optimistic_timeout` in fractions of a second (the
    embedded backend does; Runloop's API takes whole seconds). Left None, the client learns it
    from the first execute answer (the embedded backend marks its answers); False: never.
    `wrap_transport` wraps each connection pool's transport, for a caller that decides per
    request where it goes (the embedded backend's address can change while a client lives).
    `pty_url` is the template of the base URL of a devbox's PTY paths (default: see `pty.py`).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        *,
        custom_headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        stream_idle_timeout: float = 60.0,
        wrap_transport: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
        subsecond_waits: bool | None = None,
        pty_url: str | None = None,
    ) -> None:
        check_connection(base_url, api_key)
        # The embedded backend takes `optimistic_timeout` in fractions of a second (our extension);
        # Runloop's API takes whole seconds. None: whole seconds until the server says otherwise.
        self.subsecond_waits = bool(subsecond_waits)
        self._learn_waits = subsecond_waits is None
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.retry = retry or RetryPolicy()
        headers = {"User-Agent": USER_AGENT, **(custom_headers or {})}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._connect_timeout = connect_timeout
        self._urls: dict[tuple[object, ...], httpx.URL] = {}  # see `_url`
        self.pty_url = pty_url or default_pty_url(self.base_url)

        verify = _tls_context(self.base_url)

        def transport(limits: httpx.Limits) -> dict[str, Any]:
            if wrap_transport is None:
                return {"limits": limits, "verify": verify}
            return {"transport": wrap_transport(httpx.AsyncHTTPTransport(limits=limits, verify=verify))}

        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            **transport(httpx.Limits(max_connections=200, max_keepalive_connections=50)),
        )
        # Streams and long-polls hold connections for long; their own pool keeps them from
        # starving ordinary calls.
        self._stream_http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout, read=stream_idle_timeout),
            **transport(httpx.Limits(max_connections=None, max_keepalive_connections=50)),
        )
        # PTY paths are served elsewhere (a tunnel host) with a token of their own: neither the API
        # key nor the custom headers go there.
        self._pty_http = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            **transport(httpx.Limits(max_connections=50, max_keepalive_connections=10)),
        )

    @classmethod
    def from_config(cls, config: ClientConfig, **kwargs: Any) -> RunloopClient:
        return cls(config.base_url, config.api_key, custom_headers=config.custom_headers, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> RunloopClient:
        """Configured by `RUNLOOP_BASE_URL`, `RUNLOOP_API_KEY` and `RUNLOOP_CUSTOM_HEADERS`."""
        return cls.from_config(ClientConfig.from_env(), **kwargs)

    def __repr__(self) -> str:
        return f"RunloopClient(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._stream_http.aclose()
        await self._pty_http.aclose()

    async def __aenter__(self) -> RunloopClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- request machinery -------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        files: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        retry: bool | None = None,
        request_timeout: httpx.Timeout | float | None = None,
        stream: bool = False,
        long_poll: bool = False,
        pty: PtyEndpoint | None = None,
    ) -> httpx.Response:
        """Send one logical call, retrying only if it cannot act twice.

        Retried on transport errors, 408, 429 and 5xx: GET, and requests carrying an
        `idempotency_key` (sent as `x-request-id`, the same on every attempt), unless
        `retry=False` says the server may not honour the key for this call. Any other request
        is resent only when it provably never left (connection refused, connect timeout).
        With `long_poll`, a 408 is returned to the caller ("not yet") instead of raised or
        retried. With `stream`, a successful response is returned unread (the caller closes it).
        Errors record in `attempts` how many times the request was sent. With `pty`, `path` is a
        PTY path sent to that endpoint with its token (and without the API key).
        """
        retryable = (method == "GET" or idempotency_key is not None) if retry is None else retry
        all_headers = dict(headers or {})
        if idempotency_key is not None:
            all_headers["x-request-id"] = idempotency_key
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        http = self._stream_http if (stream or long_poll) else self._http
        secret = self._api_key
        if pty is not None:
            http, secret = self._pty_http, pty.auth_token
            all_headers.update(pty.headers)
        attempts = 0
        while True:
            attempts += 1
            request = http.build_request(
                method,
                pty.url(path) if pty is not None else self._url(http, path, query),
                json=json_body,
                params=query if pty is not None else None,
                files=files,
                data=data,
                headers=all_headers,
                timeout=request_timeout if request_timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            try:
                response = await http.send(request, stream=True)
                status = response.status_code
                if status < 400 or (long_poll and status == 408):
                    if not stream:
                        try:
                            await response.aread()
                        finally:
                            await response.aclose()
                    return response
            except httpx.TransportError as exc:
                reason = redact(self._describe(exc), secret)
                if not (retryable or _never_sent(exc)) or attempts >= self.retry.max_attempts:
                    raise ConnectionFailed(method, path, reason, attempts=attempts) from None
                await self._pause(method, path, reason, attempts, None)
                continue
            error = await self._error_from(response, method, path, secret)
            error.attempts = attempts
            if not (
                retryable
                and is_retryable_status(status)
                and response.headers.get("x-should-retry", "").lower() != "false"
                and attempts < self.retry.max_attempts
            ):
                raise error
            await self._pause(method, path, str(status), attempts, error.retry_after)

    def _url(self, http: httpx.AsyncClient, path: str, query: dict[str, str]) -> httpx.URL:
        """`path` with `query` on the base URL, merged once per path and query: httpx parses a URL
        three times to merge it, 90 µs of the 125 building a request takes (a command's execute
        goes to one path over and over)."""
        key = (http is self._stream_http, path, *query.items())
        url = self._urls.get(key)
        if url is None:
            url = http.build_request("GET", path, params=query).url
            if len(self._urls) >= URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = url
        return url

    async def _pause(self, method: str, path: str, reason: str, attempts: int, retry_after: float | None) -> None:
        delay = self.retry.backoff(attempts, retry_after)
        log.info("retrying %s %s after %s (attempt %d of %d, in %.2f s)", method, path, reason,
                 attempts + 1, self.retry.max_attempts, delay, extra={"retry_delay": delay})
        await anyio.sleep(delay)

    async def _error_from(
        self, response: httpx.Response, method: str, path: str, secret: str | None = None
    ) -> ApiStatusError:
        """The mapped error of an error response (body read and closed), with the key redacted."""
        try:
            raw = await response.aread()
        except httpx.TransportError:
            raw = b""
        finally:
            await response.aclose()
        message = ""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("message") is not None:
            message = str(body["message"])
        elif raw:
            message = raw.decode("utf-8", errors="replace")[:500]
        return error_for_status(
            response.status_code,
            redact(redact(message, self._api_key), secret),
            method=method,
            path=path,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            text = f"timed out ({type(exc).__name__})"
        return redact(text, self._api_key)

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise UnexpectedResponse(
                f"{response.request.method} {response.request.url.path} returned a body that is not a "
                f"{model.__name__}: {exc.errors()[0]['msg'] if exc.errors() else exc}"
            ) from None

    async def _get(self, path: str, model: type[M], *, params: Mapping[str, Any] | None = None) -> M:
        return self._parse(await self._send("GET", path, params=params), model)

    async def _post(
        self,
        path: str,
        model: type[M],
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        request_timeout: httpx.Timeout | float | None = None,
        retry: bool | None = None,
    ) -> M:
        """POST with a fresh idempotency key; `retry=False` for calls a server may not dedupe."""
        response = await self._send(
            "POST", path, json_body=body, params=params, idempotency_key=new_request_id(),
            request_timeout=request_timeout, retry=retry,
        )
        return self._parse(response, model)

    async def _long_poll(
        self, path: str, body: dict[str, Any], model: type[M], *, what: str, hold: float, timeout_seconds: float,
        params: Mapping[str, Any] | None = None,
    ) -> M:
        """POST a long-poll repeatedly (each held ≤ `hold` s) until it answers or `timeout` passes.

        The API takes the hold in whole seconds, so the last one may end up to a second late.
        """
        deadline = time.monotonic() + timeout_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(what, timeout_seconds)
            hold_now = max(1, math.ceil(min(hold, remaining)))
            response = await self._send(
                "POST",
                path,
                json_body={**body, "timeout_seconds": hold_now},
                params=params,
                idempotency_key=new_request_id(),
                request_timeout=httpx.Timeout(hold_now + LONG_POLL_MARGIN_SECONDS, connect=self._connect_timeout),
                long_poll=True,
            )
            if response.status_code != 408:
                return self._parse(response, model)

    @asynccontextmanager
    async def _connect_sse(self, path: str, params: dict[str, str]) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
        """One SSE connection; error statuses raise the mapped error (no retry: the stream loop decides)."""
        response = await self._send_stream_once(path, params)
        try:
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                raise UnexpectedResponse(f"GET {path} answered {content_type!r} instead of an event stream")
            yield EventSource(response).aiter_sse()
        finally:
            await response.aclose()

    async def _send_stream_once(self, path: str, params: dict[str, str]) -> httpx.Response:
        request = self._stream_http.build_request(
            "GET", path, params=params, headers={"Accept": "text/event-stream", "Cache-Control": "no-store"}
        )
        response = await self._stream_http.send(request, stream=True)
        if response.status_code >= 400:
            raise await self._error_from(response, "GET", path)
        return response

    # --- devboxes ------------------------------------------------------------------------------

    async def create_devbox(
        self,
        *,
        name: str | None = None,
        environment_variables: Mapping[str, str] | None = None,
        launch_commands: Sequence[str] | None = None,
        network_mode: str | None = None,
        launch_parameters: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        idle_timeout_seconds: int | None = None,
        on_idle: Literal["suspend", "shutdown"] = "suspend",
        extra: Mapping[str, Any] | None = None,
    ) -> DevboxView:
        """Create a devbox (returns at once, normally `provisioning`; see `watch_devbox`).

        `launch_commands`, `network_mode` (our extension, e.g. "none") and the idle policy
        (`idle_timeout_seconds` unused, then `on_idle`: as `lifecycle.after_idle`) go into
        `launch_parameters`; `secrets` maps environment variables to secret names; `extra` passes
        any other create field (blueprint_id, ...) as is. Sent with an idempotency key, so a
        retry never creates a second devbox.
        """
        params: dict[str, Any] = dict(launch_parameters or {})
        if launch_commands is not None:
            params["launch_commands"] = list(launch_commands)
        if network_mode is not None:
            params["network_mode"] = network_mode
        if idle_timeout_seconds is not None:
            lifecycle = dict(params.get("lifecycle") or {})
            lifecycle["after_idle"] = {"idle_time_seconds": idle_timeout_seconds, "on_idle": on_idle}
            params["lifecycle"] = lifecycle
        body: dict[str, Any] = dict(extra or {})
        if name is not None:
            body["name"] = name
        if environment_variables:
            body["environment_variables"] = dict(environment_variables)
        if secrets:
            body["secrets"] = dict(secrets)
        if params:
            body["launch_parameters"] = params
        if metadata:
            body["metadata"] = dict(metadata)
        return await self._post("/v1/devboxes", DevboxView, body)

    # --- blueprints -----------------------------------------------------------------------------

    async def create_blueprint(self, body: Mapping[str, Any]) -> BlueprintView:
        """Start a blueprint build (BlueprintBuildParameters as is); it builds in the background."""
        return await self._post("/v1/blueprints", BlueprintView, dict(body))

    async def get_blueprint(self, blueprint_id: str) -> BlueprintView:
        return await self._get(f"/v1/blueprints/{_path_segment(blueprint_id)}", BlueprintView)

    async def list_blueprints(
        self, *, name: str | None = None, limit: int | None = None, starting_after: str | None = None
    ) -> BlueprintListPage:
        params = {"name": name, "limit": limit, "starting_after": starting_after}
        return await self._get("/v1/blueprints", BlueprintListPage, params=params)

    async def blueprint_logs(self, blueprint_id: str) -> BlueprintLogs:
        return await self._get(f"/v1/blueprints/{_path_segment(blueprint_id)}/logs", BlueprintLogs)

    async def delete_blueprint(self, blueprint_id: str) -> None:
        await self._send("POST", f"/v1/blueprints/{_path_segment(blueprint_id)}/delete", idempotency_key=new_request_id())

    async def get_devbox(self, devbox_id: str) -> DevboxView:
        return await self._get(f"/v1/devboxes/{_path_segment(devbox_id)}", DevboxView)

    async def devbox_usage(self, devbox_id: str) -> DevboxUsage:
        return await self._get(f"/v1/devboxes/{_path_segment(devbox_id)}/usage", DevboxUsage)

    async def list_devboxes(
        self, *, status: str | None = None, limit: int | None = None, starting_after: str | None = None
    ) -> DevboxListPage:
        if status is not None and status not in DEVBOX_STATUSES:
            raise InvalidArgument(f"cannot list by status {status!r}; the API filters by {', '.join(DEVBOX_STATUSES)}")
        params = {"status": status, "limit": limit, "starting_after": starting_after}
        return await self._get("/v1/devboxes", DevboxListPage, params=params)

    async def create_network_policy(
        self, *, name: str, allowed_hostnames: Sequence[str] | None = None, description: str | None = None
    ) -> NetworkPolicyView:
        body: dict[str, Any] = {"name": name, "allowed_hostnames": list(allowed_hostnames or [])}
        if description is not None:
            body["description"] = description
        return await self._post("/v1/network-policies", NetworkPolicyView, body)

    async def get_network_policy(self, policy_id: str) -> NetworkPolicyView:
        return await self._get(f"/v1/network-policies/{_path_segment(policy_id)}", NetworkPolicyView)

    async def list_network_policies(self, *, name: str | None = None, limit: int | None = None) -> NetworkPolicyListPage:
        """Policies whose name contains `name` (a page of them)."""
        return await self._get("/v1/network-policies", NetworkPolicyListPage, params={"name": name, "limit": limit})

    async def update_devbox(
        self, devbox_id: str, *, name: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> DevboxView:
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return await self._post(f"/v1/devboxes/{_path_segment(devbox_id)}", DevboxView, body)

    async def wait_for_devbox_status(
        self, devbox_id: str, statuses: Iterable[str], *, timeout_seconds: float = DEFAULT_WAIT_SECONDS
    ) -> DevboxView:
        """Long-poll until the devbox is in one of `statuses` (a 408 hold just loops).

        Raises `WaitTimeout` after `timeout_seconds` overall. To wait for "running", include
        "failure" and "shutdown" too, or a failed devbox makes this wait the whole timeout.
        """
        wanted = list(dict.fromkeys(statuses))
        if not wanted:
            raise InvalidArgument("statuses must name at least one devbox status")
        unknown = [s for s in wanted if s not in DEVBOX_STATUSES]
        if unknown:
            raise InvalidArgument(f"cannot wait for status {unknown[0]!r}; the API waits for {', '.join(DEVBOX_STATUSES)}")
        return await self._long_poll(
            f"/v1/devboxes/{_path_segment(devbox_id)}/wait_for_status",
            {"statuses": wanted},
            DevboxView,
            what=f"devbox {devbox_id} to be {'/'.join(wanted)}",
            hold=DEVBOX_LONG_POLL_SECONDS,
            timeout_seconds=timeout_seconds,
        )

    async def watch_devbox(
        self,
        devbox_id: str,
        until: Iterable[str],
        *,
        timeout_seconds: float = DEFAULT_WAIT_SECONDS,
        current: DevboxView | None = None,
    ) -> AsyncIterator[DevboxView]:
        """Yield the devbox view now and at each status change, ending once its status is in `until`.

        Each wait is a long-poll for "any status but the current one", so transitions are seen
        as they happen without polling. Raises `WaitTimeout` after `timeout_seconds` overall.
        `current`: the view the caller just received (from create or resume), the start instead
        of a request that would read it again.
        """
        targets = set(until)
        deadline = time.monotonic() + timeout_seconds
        view = current if current is not None and current.id == devbox_id else await self.get_devbox(devbox_id)
        yield view
        while view.status not in targets:
            others = [s for s in DEVBOX_STATUSES if s != view.status]
            remaining = deadline - time.monotonic()
            try:
                view = await self.wait_for_devbox_status(devbox_id, others, timeout_seconds=max(remaining, 0.001))
            except WaitTimeout:
                raise WaitTimeout(f"devbox {devbox_id} to be {'/'.join(sorted(targets))}", timeout_seconds, view) from None
            yield view

    async def shutdown_devbox(self, devbox_id: str, *, force: bool = False) -> DevboxView:
        params = {"force": True} if force else None
        return await self._post(f"/v1/devboxes/{_path_segment(devbox_id)}/shutdown", DevboxView, params=params)

    async def enable_tunnel(
        self, devbox_id: str, *, auth_mode: Literal["open", "authenticated"] = "open",
        http_keep_alive: bool | None = None, wake_on_http: bool | None = None,
    ) -> TunnelView:
        """Give the devbox its tunnel (a devbox has one: a second is a BadRequest)."""
        body = {"auth_mode": auth_mode, "http_keep_alive": http_keep_alive, "wake_on_http": wake_on_http}
        body = {k: v for k, v in body.items() if v is not None}
        return await self._post(f"/v1/devboxes/{_path_segment(devbox_id)}/enable_tunnel", TunnelView, body)
    # --- disk snapshots ---------------------------------------------------------------------------

    async def snapshot_devbox_async(
        self, devbox_id: str, *, name: str | None = None, commit_message: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> SnapshotView:  # fmt: skip
        """Start a disk snapshot (returns at once, `in_progress`; see `snapshot_status`)."""
        body = {"name": name, "commit_message": commit_message, "metadata": dict(metadata) if metadata else None}
        return await self._post(
            f"/v1/devboxes/{_path_segment(devbox_id)}/snapshot_disk_async", SnapshotView,
            {k: v for k, v in body.items() if v is not None},
        )  # fmt: skip

    async def snapshot_status(self, snapshot_id: str) -> SnapshotStatus:
        return await self._get(f"/v1/devboxes/disk_snapshots/{_path_segment(snapshot_id)}/status", SnapshotStatus)

    async def list_snapshots(
        self, *, devbox_id: str | None = None, limit: int | None = None, starting_after: str | None = None
    ) -> SnapshotListPage:
        params = {"devbox_id": devbox_id, "limit": limit, "starting_after": starting_after}
        return await self._get("/v1/devboxes/disk_snapshots", SnapshotListPage, params=params)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._send(
            "POST", f"/v1/devboxes/disk_snapshots/{_path_segment(snapshot_id)}/delete", idempotency_key=new_request_id()
        )

    async def fork_devbox(self, devbox_id: str, *, count: int, name_prefix: str | None = None) -> list[DevboxView]:
        """The embedded backend's fork: `count` running copies of the devbox from one snapshot.
        NotFound from a server without it (Runloop's cloud): snapshot and create instead."""
        body: dict[str, Any] = {"count": count}
        if name_prefix is not None:
            body["name_prefix"] = name_prefix
        forked = await self._post(f"/v1/devboxes/{_path_segment(devbox_id)}/fork", DevboxListPage, body)
        return forked.devboxes

    async def suspend_devbox(self, devbox_id: str) -> DevboxView:
        return await self._transition(devbox_id, "suspend", {"suspending", "suspended"})

    async def resume_devbox(self, devbox_id: str) -> DevboxView:
        return await self._transition(devbox_id, "resume", {"resuming", "running"})

    async def _transition(self, devbox_id: str, action: str, reached: set[str]) -> DevboxView:
        """POST a state change. If a retry (after the first attempt's answer was lost) is
        refused because the change already happened, that is success: return the devbox."""
        try:
            return await self._post(f"/v1/devboxes/{_path_segment(devbox_id)}/{action}", DevboxView)
        except (BadRequest, Conflict) as err:
            if err.attempts < 2:
                raise
            view = await self.get_devbox(devbox_id)
            if view.status not in reached:
                raise
            return view

    async def keep_alive_devbox(self, devbox_id: str) -> None:
        await self._send("POST", f"/v1/devboxes/{_path_segment(devbox_id)}/keep_alive", idempotency_key=new_request_id())

    async def get_devbox_logs(self, devbox_id: str, *, execution_id: str | None = None) -> list[LogEntry]:
        response = await self._send("GET", f"/v1/devboxes/{_path_segment(devbox_id)}/logs", params={"execution_id": execution_id})
        return self._parse(response, _LogList).logs

    # --- files ---------------------------------------------------------------------------------

    async def read_file_contents(self, devbox_id: str, file_path: str, *, max_bytes: int | None = None) -> str:
        """A text file's contents (UTF-8; undecodable bytes replaced). Paths are relative to home.

        With `max_bytes`, raises `FileTooLarge` instead of buffering more than that.
        """
        data = await self._read_body(
            f"/v1/devboxes/{_path_segment(devbox_id)}/read_file_contents",
            {"file_path": file_path},
            accept="text/plain",
            path_for_errors=file_path,
            max_bytes=max_bytes,
            fail_over_cap=True,
        )
        return data.data.decode("utf-8", errors="replace")

    async def write_file_contents(self, devbox_id: str, file_path: str, contents: str) -> ExecutionDetail:
        return await self._post(
            f"/v1/devboxes/{_path_segment(devbox_id)}/write_file_contents",
            ExecutionDetail,
            {"file_path": file_path, "contents": contents},
            request_timeout=SLOW_CALL_SECONDS,
        )

    async def upload_file(self, devbox_id: str, path: str, data: bytes) -> None:
        """Write bytes to `path` in the devbox (multipart upload)."""
        filename = path.rsplit("/", 1)[-1] or "file"
        await self._send(
            "POST",
            f"/v1/devboxes/{_path_segment(devbox_id)}/upload_file",
            data={"path": path},
            files={"file": (filename, data, "application/octet-stream")},
            idempotency_key=new_request_id(),
            request_timeout=SLOW_CALL_SECONDS,
        )

    async def download_file(
        self, devbox_id: str, path: str, *, max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES
    ) -> FileDownload:
        """Up to `max_bytes` of a file. The body is streamed and reading stops at the cap, so a
        huge file cannot exhaust memory; `truncated` and `size` report what was left."""
        return await self._read_body(
            f"/v1/devboxes/{_path_segment(devbox_id)}/download_file",
            {"path": path},
            accept="application/octet-stream",
            path_for_errors=path,
            max_bytes=max_bytes,
            fail_over_cap=False,
        )

    async def _read_body(
        self, api_path: str, body: dict[str, Any], *, accept: str, path_for_errors: str,
        max_bytes: int | None, fail_over_cap: bool,
    ) -> FileDownload:
        response = await self._send(
            "POST", api_path, json_body=body, headers={"Accept": accept}, idempotency_key=new_request_id(),
            request_timeout=SLOW_CALL_SECONDS, stream=True,
        )
        declared = _content_length(response)
        chunks: list[bytes] = []
        received = 0
        truncated = False
        try:
            if max_bytes is not None and declared is not None and declared > max_bytes and fail_over_cap:
                raise FileTooLarge(path_for_errors, max_bytes, declared)
            async for piece in response.aiter_bytes():
                if max_bytes is not None and received + len(piece) > max_bytes:
                    if fail_over_cap:
                        raise FileTooLarge(path_for_errors, max_bytes, declared)
                    chunks.append(piece[: max_bytes - received])
                    received = max_bytes
                    truncated = True
                    break
                chunks.append(piece)
                received += len(piece)
        except httpx.TransportError as exc:
            raise ConnectionFailed("POST", api_path, self._describe(exc)) from None
        finally:
            await response.aclose()
        size = received if not truncated else declared
        return FileDownload(path=path_for_errors, data=b"".join(chunks), truncated=truncated, size=size)

    # --- executions ----------------------------------------------------------------------------

    async def execute(
        self,
        devbox_id: str,
        command: str,
        *,
        command_id: str | None = None,
        optimistic_timeout: float | None = None,
        last_n: int | None = None,
        output_grace: float | None = None,
        on_output: Callable[[ExecutionView], Awaitable[None]] | None = None,
    ) -> ExecutionView:
        """Start `command` through the idempotent execute endpoint and wait up to
        `optimistic_timeout` s (≤ 25) for it to complete.

        `command_id` (a UUIDv7 generated when not given) makes retries safe: the server runs a
        given id once, and a second call with the same id attaches to the same execution. The
        returned view's `execution_id` is the id to stream and wait on. A fraction of a second
        is sent only to a server that takes one (`subsecond_waits`), else it is refused here;
        so is `output_grace` (the embedded backend's extension: answer once the command has
        printed and that many seconds more passed without it completing).
        `on_output` (the embedded backend only; ignored elsewhere) is awaited with each view of the
        command still running as it comes: the first as soon as it prints, while the request is
        held on for it to complete; the answer's own view too, when it is still running.
        """
        if output_grace is not None and not self.subsecond_waits:
            raise InvalidArgument("output_grace is an extension of the embedded backend, which this server is not")
        if optimistic_timeout is not None and not 0 <= optimistic_timeout <= 25:
            raise InvalidArgument(f"optimistic_timeout must be between 0 and 25 seconds, got {optimistic_timeout}")
        if optimistic_timeout is not None and optimistic_timeout != int(optimistic_timeout):
            if not self.subsecond_waits:
                raise InvalidArgument(f"optimistic_timeout must be whole seconds for this API, got {optimistic_timeout}")
        elif optimistic_timeout is not None:
            optimistic_timeout = int(optimistic_timeout)
        body: dict[str, Any] = {"command": command, "command_id": command_id or new_command_id()}
        if optimistic_timeout is not None:
            body["optimistic_timeout"] = optimistic_timeout
        if output_grace is not None:
            body["output_grace_seconds"] = output_grace
        wait = float(optimistic_timeout or 0)
        path = f"/v1/devboxes/{_path_segment(devbox_id)}/execute"
        timeout = httpx.Timeout(wait + 30.0, connect=self._connect_timeout)
        if on_output is not None and self.subsecond_waits and wait > 0:
            try:
                return await self._execute_lines(path, body, last_n, timeout, on_output)
            except _LinesBroken:
                pass  # asked again below: the same command_id attaches to the same execution
        response = await self._send(
            "POST", path, json_body=body, params={"last_n": last_n}, idempotency_key=new_request_id(),
            request_timeout=timeout,
        )
        if self._learn_waits and response.headers.get(SUBSECOND_WAITS_HEADER) == "1":
            self.subsecond_waits = True  # the embedded backend says so on every execute answer
        return self._parse(response, ExecutionView)

    async def _execute_lines(
        self, path: str, body: dict[str, Any], last_n: int | None, request_timeout: httpx.Timeout,
        on_output: Callable[[ExecutionView], Awaitable[None]],
    ) -> ExecutionView:
        """The held execute answer as lines of views (the embedded backend's extension): each view
        of the command still running is passed to `on_output` as it comes; the last is the answer.

        Raises `_LinesBroken` when the connection fails after the command was started.
        """
        response = await self._send(
            "POST", path, json_body=body, params={"last_n": last_n}, idempotency_key=new_request_id(),
            request_timeout=request_timeout, headers={"Accept": NDJSON}, stream=True,
        )
        try:
            if not response.headers.get("content-type", "").startswith(NDJSON):
                await response.aread()  # a server without the extension: its one-object answer
                return self._parse(response, ExecutionView)
            last: ExecutionView | None = None
            async for line in _lines(response):
                if not line.strip():
                    continue
                try:
                    last = ExecutionView.model_validate_json(line)
                except ValidationError as exc:
                    raise UnexpectedResponse(f"POST {path} returned a line that is not an ExecutionView: {exc}") from None
                if not last.completed:
                    await on_output(last)
        except httpx.TransportError:
            raise _LinesBroken from None
        finally:
            await response.aclose()
        if last is None:
            raise _LinesBroken
        return last

    async def execute_async(self, devbox_id: str, command: str, *, attach_stdin: bool = False) -> ExecutionView:
        """Start `command` and return at once (status `queued` or `running`)."""
        body: dict[str, Any] = {"command": command}
        if attach_stdin:
            body["attach_stdin"] = True
        return await self._post(f"/v1/devboxes/{_path_segment(devbox_id)}/execute_async", ExecutionView, body)

    async def execute_sync(self, devbox_id: str, command: str) -> ExecutionDetail:
        """Run `command` to completion in one call (deprecated by Runloop; kept for simple uses)."""
        return await self._post(
            f"/v1/devboxes/{_path_segment(devbox_id)}/execute_sync", ExecutionDetail, {"command": command},
            request_timeout=SLOW_CALL_SECONDS,
        )

    async def get_execution(self, devbox_id: str, execution_id: str, *, last_n: int | None = None) -> ExecutionView:
        return await self._get(
            f"/v1/devboxes/{_path_segment(devbox_id)}/executions/{_path_segment(execution_id)}", ExecutionView,
            params={"last_n": last_n},
        )

    async def wait_for_execution(
        self,
        devbox_id: str,
        execution_id: str,
        *,
        statuses: Iterable[str] = ("completed",),
        timeout_seconds: float = DEFAULT_WAIT_SECONDS,
        last_n: int | None = None,
    ) -> ExecutionView:
        """Long-poll (≤ 25 s per request; 408 = not yet) until the execution is in `statuses`.

        Raises `WaitTimeout` after `timeout_seconds` overall; the command keeps running.
        """
        wanted = list(dict.fromkeys(statuses))
        return await self._long_poll(
            f"/v1/devboxes/{_path_segment(devbox_id)}/executions/{_path_segment(execution_id)}/wait_for_status",
            {"statuses": wanted},
            ExecutionView,
            what=f"execution {execution_id} to be {'/'.join(wanted)}",
            hold=EXECUTION_LONG_POLL_SECONDS,
            timeout_seconds=timeout_seconds,
            params={"last_n": last_n},
        )

    async def kill_execution(
        self, devbox_id: str, execution_id: str, *, kill_process_group: bool = True
    ) -> ExecutionView:
        """Kill the execution (by default its whole process group, so no child survives)."""
        return await self._post(
            f"/v1/devboxes/{_path_segment(devbox_id)}/executions/{_path_segment(execution_id)}/kill",
            ExecutionView,
            {"kill_process_group": kill_process_group},
        )

    async def send_stdin(
        self,
        devbox_id: str,
        execution_id: str,
        *,
        text: str | None = None,
        signal: Literal["EOF", "INTERRUPT"] | None = None,
    ) -> StdinResult:
        """Send text or a signal (EOF, INTERRUPT) to an execution started with `attach_stdin=True`.

        Sends are not ordered by the API: await each before sending the next. Not retried after
        an ambiguous failure (servers need not dedupe it, and text sent twice would be read twice).
        """
        if (text is None) == (signal is None):
            raise InvalidArgument("send_stdin needs exactly one of text or signal")
        if text is not None and text == "":
            raise InvalidArgument("send_stdin text must not be empty (to close stdin, send signal='EOF')")
        if signal is not None and signal not in ("EOF", "INTERRUPT"):
            raise InvalidArgument(f"signal must be 'EOF' or 'INTERRUPT', not {signal!r}")
        body = {"text": text} if text is not None else {"signal": signal}
        return await self._post(
            f"/v1/devboxes/{_path_segment(devbox_id)}/executions/{_path_segment(execution_id)}/send_std_in", StdinResult, body,
            retry=False,
        )

    def stream_output(
        self,
        devbox_id: str,
        execution_id: str,
        stream: Literal["stdout", "stderr"] = "stdout",
        offset: int = 0,
    ) -> AsyncIterator[OutputChunk]:
        """Output chunks of one stream from byte `offset`, resuming across dropped connections,
        until the server ends the stream (the execution completed and all output was sent).

        Each chunk's `offset` is the byte offset after it, counted from the bytes received.
        """
        if offset < 0:
            raise InvalidArgument(f"offset must be ≥ 0, got {offset}")
        return output_chunks(self._connect_sse, _path_segment(devbox_id), _path_segment(execution_id), stream, offset, self.retry)

    # --- axons ---------------------------------------------------------------------------------

    async def create_axon(self, *, name: str | None = None, metadata: Mapping[str, str] | None = None) -> AxonView:
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if metadata is not None:
            body["metadata"] = dict(metadata)
        return await self._post("/v1/axons", AxonView, body)

    async def list_axons(
        self,
        *,
        name: str | None = None,
        search: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> AxonListPage:
        params = {"name": name, "search": search, "limit": limit, "starting_after": starting_after}
        return await self._get("/v1/axons", AxonListPage, params=params)

    async def get_axon(self, axon_id: str) -> AxonView:
        return await self._get(f"/v1/axons/{_path_segment(axon_id)}", AxonView)

    async def publish(
        self,
        axon_id: str,
        *,
        event_type: str,
        payload: Any,
        source: str = "devbox-mcp",
        origin: str = "AGENT_EVENT",
    ) -> PublishResult:
        """Append an event. `payload` is any JSON value; it is JSON-encoded for the API.

        SYSTEM_EVENT is reserved for the platform and refused here, before anything is sent.
        Sent with an idempotency key, so a retry never appends the event twice.
        """
        if origin == "SYSTEM_EVENT":
            raise InvalidArgument(
                "origin SYSTEM_EVENT is reserved for the platform and cannot be published; "
                f"use one of {', '.join(PUBLISHABLE_ORIGINS)}"
            )
        if origin not in PUBLISHABLE_ORIGINS:
            raise InvalidArgument(f"origin must be one of {', '.join(PUBLISHABLE_ORIGINS)}, not {origin!r}")
        if not event_type:
            raise InvalidArgument("event_type must not be empty")
        try:
            encoded = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"payload must be a JSON value: {exc}") from None
        body = {"event_type": event_type, "origin": origin, "payload": encoded, "source": source}
        return await self._post(f"/v1/axons/{_path_segment(axon_id)}/publish", PublishResult, body)

    async def list_events(
        self, axon_id: str, *, limit: int | None = None, starting_after: str | int | None = None
    ) -> AxonEventListPage:
        """A page of events, newest first (sequence descending), as the API orders them."""
        params = {"limit": limit, "starting_after": starting_after}
        return await self._get(f"/v1/axons/{_path_segment(axon_id)}/events", AxonEventListPage, params=params)

    async def sql_query(
        self, axon_id: str, sql: str, params: Sequence[Any] | None = None, *, read_only: bool = False
    ) -> SqlResult:
        """Run one SQL statement (`?` placeholders) on the axon's database. Event history is the
        table `rl_axon_events`. No read-only check here: that policy belongs to the tool.

        A statement may write, and a write retried after a lost response could apply twice, so
        it is retried only when the caller vouches it is `read_only`.
        """
        body: dict[str, Any] = {"sql": sql}
        if params is not None:
            body["params"] = list(params)
        return await self._post(f"/v1/axons/{_path_segment(axon_id)}/sql/query", SqlResult, body, retry=read_only)

    async def sql_batch(
        self, axon_id: str, statements: Sequence[SqlStatement | Mapping[str, Any]], *, read_only: bool = False
    ) -> SqlBatchResult:
        """Run statements atomically in one transaction; one result (success or error) each.
        Retried only when `read_only` (see `sql_query`)."""
        items = [s if isinstance(s, SqlStatement) else SqlStatement.model_validate(s) for s in statements]
        body = {"statements": [s.model_dump(exclude_none=True) for s in items]}
        return await self._post(f"/v1/axons/{_path_segment(axon_id)}/sql/batch", SqlBatchResult, body, retry=read_only)

    def subscribe_axon(self, axon_id: str, after_sequence: int | None = None) -> AsyncIterator[AxonEventView]:
        """Events with sequence > `after_sequence` (None: from the first), forever: a dropped or
        idle-closed connection is resumed after the last sequence seen. Close it with `aclose()`
        or by leaving the `async for`."""
        return axon_events(self._connect_sse, _path_segment(axon_id), after_sequence, self.retry)


    # --- PTY sessions --------------------------------------------------------------------------

    async def create_pty_tunnel(self, devbox_id: str) -> PtyTunnelView:
        """A fresh tunnel key and token for the devbox's PTY paths (400 when it is not running)."""
        return await self._post(f"/v1/devboxes/{_path_segment(devbox_id)}/create_pty_tunnel", PtyTunnelView)

    async def pty_endpoint(self, devbox_id: str) -> PtyEndpoint:
        """Where the devbox's PTY paths are served now, with the token they need."""
        tunnel = await self.create_pty_tunnel(devbox_id)
        return PtyEndpoint(pty_base_url(self.pty_url, self.base_url, tunnel.tunnel_key), tunnel.auth_token)

    async def pty_connect(
        self, endpoint: PtyEndpoint, session_name: str, *, cols: int | None = None, rows: int | None = None
    ) -> tuple[PtyConnectView, httpx.URL]:
        """Create or reconnect to a named PTY session; also the URL that answered (the WebSocket's origin)."""
        response = await self._send(
            "GET", session_path(_path_segment(session_name)), params={"cols": cols, "rows": rows}, pty=endpoint
        )
        return self._parse(response, PtyConnectView), response.request.url

    async def pty_control(
        self,
        endpoint: PtyEndpoint,
        session_name: str,
        action: Literal["resize", "signal", "close"],
        *,
        cols: int | None = None,
        rows: int | None = None,
        signal: str | None = None,
    ) -> PtyControlResultView:
        """Resize a PTY session, signal its foreground process group, or close it."""
        body: dict[str, Any] = {"action": action}
        body.update({k: v for k, v in (("cols", cols), ("rows", rows), ("signal", signal)) if v is not None})
        # Resize and close act the same when repeated; a signal must not be sent twice.
        response = await self._send(
            "POST", session_path(_path_segment(session_name), "/control"), json_body=body,
            idempotency_key=new_request_id(), retry=action != "signal", pty=endpoint,
        )
        return self._parse(response, PtyControlResultView)

    async def pty_attach(
        self, endpoint: PtyEndpoint, session_name: str, *, cols: int | None = None, rows: int | None = None
    ) -> tuple[PtyConnectView, PtySocket]:
        """Create or reconnect to a PTY session and attach to its WebSocket (one client at a time)."""
        view, answered = await self.pty_connect(endpoint, session_name, cols=cols, rows=rows)
        if not view.connect_url:
            raise UnexpectedResponse(f"GET /pty/{session_name} answered no connect_url")
        socket = await PtySocket.open(websocket_url(answered, endpoint.base_url, view.connect_url), endpoint)
        return view, socket


class _LogList(BaseModel):
    logs: list[LogEntry] = []


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of a response body as they come, split at newlines only: a view's text may hold
    U+2028, NEL and the like, which JSON need not escape and `aiter_lines` would split at. A body
    of known length (the embedded backend's answer to a command done within the hold: one line)
    is read whole, in one step."""
    if _content_length(response) is not None:
        for line in (await response.aread()).split(b"\n"):
            yield line.decode("utf-8", errors="replace")
        return
    pending = b""
    async for chunk in response.aiter_bytes():
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _tls_context(base_url: str) -> ssl.SSLContext:
    """One TLS context for both connection pools, made once: loading the CA bundle costs about
    20 ms, and each pool would load its own, at every server start (the cold start of a stdio
    server). A plain-HTTP base URL (the embedded backend on loopback) loads none: a request
    sent elsewhere over TLS would then fail verification, never skip it."""
    if base_url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names; trusts no one
    return httpx.create_ssl_context()


def _path_segment(value: str) -> str:
    """An id as one URL path segment: refuse what would change the path (`/`, `..`, empty)."""
    if not value or "/" in value or value in (".", "..") or "?" in value or "#" in value:
        raise InvalidArgument(f"{value!r} is not a valid id")
    return value


def _never_sent(exc: BaseException) -> bool:
    """The request never reached the server, so resending it cannot make it act twice."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None
