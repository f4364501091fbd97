"""The Runloop client's request path: error mapping, the retry policy, idempotency, secrets.

Faults come from `faultproxy` (a real TCP proxy); the upstream is the real embedded backend.
Endpoint-independent cases use `/healthz` and unknown routes through the client's one request
path (`_send`), so they hold whatever API areas exist.
"""

from __future__ import annotations

import json
import logging
import socket
import traceback
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from support.faultproxy import FaultProxy
from support.runloop_client import FAST, client_for

from mcp_server.runloop import (
    ApiStatusError,
    Authentication,
    ClientConfig,
    ConnectionFailed,
    NotFound,
    RateLimited,
    RetryPolicy,
    RunloopClient,
    ServerError,
    new_command_id,
)
from mcp_server.runloop.config import parse_custom_headers
from mcp_server.runloop.errors import StreamError, error_for_status, redact
from mcp_server.runloop.pty import PtyEndpoint
from mcp_server.runloop.retry import parse_retry_after

pytestmark = pytest.mark.anyio



# --- pure parts ------------------------------------------------------------------------------


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now=now.timestamp()) == 7.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now=now.timestamp()) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_grows_with_jitter_and_honours_retry_after_up_to_a_cap() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=4.0, max_retry_after=10.0)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        delays = {policy.backoff(failures) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1, "jitter spreads retries"
    assert policy.backoff(1, retry_after=7.5) == 7.5
    assert policy.backoff(1, retry_after=99.0) == 10.0


def test_status_maps_to_error_classes() -> None:
    expected = {400: "BadRequest", 401: "Authentication", 403: "PermissionDenied", 404: "NotFound",
                408: "RequestTimeout", 409: "Conflict", 422: "Unprocessable", 429: "RateLimited",
                500: "ServerError", 503: "ServerError", 418: "ApiStatusError"}
    for status, name in expected.items():
        err = error_for_status(status, "why", method="GET", path="/p")
        assert type(err).__name__ == name
        assert err.status == status and err.message == "why"
        assert str(err).startswith(f"{status} ") and "why" in str(err) and "GET /p" in str(err)


def test_an_error_gives_one_hint_at_most() -> None:
    """The API's own account (400, 404, 409, 422) is the hint when it sent one; statuses about the
    caller's situation always get theirs; without a message every status gets its generic hint."""
    own_account = {400, 404, 409, 422, 418}
    for status in (400, 401, 403, 404, 408, 409, 422, 429, 500, 418):
        told = str(error_for_status(status, "thing 'x' not found; list things to see which ids exist"))
        assert told.endswith("list things to see which ids exist") == (status in own_account), (status, told)
        assert told.count("(") <= 1 and told.count("list") == 1, told
        silent = error_for_status(status, "", method="GET", path="/p")
        assert str(silent).endswith(f"from GET /p: (no message) ({silent.hint})"), str(silent)


def test_command_ids_are_uuid7() -> None:
    import uuid

    ids = [new_command_id() for _ in range(100)]
    assert len(set(ids)) == 100
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    stamps = [uuid.UUID(v).int >> 80 for v in ids]
    assert stamps == sorted(stamps), "the 48-bit millisecond prefix orders them by time"


def test_config_from_env_and_custom_headers() -> None:
    config = ClientConfig.from_env({"RUNLOOP_API_KEY": "k" * 20, "RUNLOOP_CUSTOM_HEADERS": "X-A: 1\nbad\nX-B:two"})
    assert config.base_url == "https://api.runloop.ai"
    assert config.custom_headers == {"X-A": "1", "X-B": "two"}
    assert "k" * 20 not in repr(config)
    assert ClientConfig.from_env({"RUNLOOP_BASE_URL": "http://127.0.0.1:9/"}).base_url == "http://127.0.0.1:9"
    assert parse_custom_headers("") == {}


def test_redact_replaces_keys_but_not_short_words() -> None:
    assert redact("key=sk_live_abcdef123 end", "sk_live_abcdef123") == "key=[redacted] end"
    assert redact("wrong key", "wrong") == "wrong key"


# --- over the network ------------------------------------------------------------------------


async def test_custom_headers_are_sent(fault_proxy: FaultProxy, backend) -> None:
    async with RunloopClient(fault_proxy.url, backend.api_key, custom_headers={"X-Team": "blue"}) as client:
        await client._send("GET", "/healthz")
    (seen,) = fault_proxy.seen("/healthz")
    assert seen.headers["x-team"] == "blue"
    assert seen.headers["authorization"] == f"Bearer {backend.api_key}"


async def test_each_request_goes_to_its_own_path_and_query(fault_proxy: FaultProxy, backend) -> None:
    """Request URLs are merged with the base URL once per path and query and reused: a path asked
    again with another query, or none, is sent with that one."""
    async with RunloopClient(fault_proxy.url + "/", backend.api_key) as client:
        for params in ({"last_n": 5}, {"last_n": 7}, None, {"last_n": 5, "flag": True}, {"last_n": None}):
            await client._send("GET", "/healthz", params=params)
    assert [seen.target for seen in fault_proxy.seen("^/healthz")] == [
        "/healthz?last_n=5", "/healthz?last_n=7", "/healthz", "/healthz?last_n=5&flag=true", "/healthz"
    ]


async def test_get_is_retried_on_5xx_then_succeeds(fault_proxy: FaultProxy, backend) -> None:
    fault_proxy.fail("^/healthz$", status=503, times=2)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        response = await client._send("GET", "/healthz")
    assert response.json() == {"status": "ok"}
    assert len(fault_proxy.seen("^/healthz$")) == 3


async def test_retries_stop_at_max_attempts_with_the_last_error(fault_proxy: FaultProxy, backend) -> None:
    fault_proxy.fail("^/healthz$", status=502, times=None, message="upstream down")
    async with client_for(fault_proxy.url, backend.api_key) as client:
        with pytest.raises(ServerError) as info:
            await client._send("GET", "/healthz")
    assert info.value.status == 502 and info.value.message == "upstream down"
    assert len(fault_proxy.seen("^/healthz$")) == FAST.max_attempts


async def test_x_should_retry_false_stops_retries(fault_proxy: FaultProxy, backend) -> None:
    fault_proxy.fail("^/healthz$", status=503, times=None, should_retry=False)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        with pytest.raises(ServerError) as info:
            await client._send("GET", "/healthz")
    assert info.value.attempts == 1 and len(fault_proxy.seen("^/healthz$")) == 1


async def test_429_retry_after_is_honoured(fault_proxy: FaultProxy, backend, caplog) -> None:
    fault_proxy.fail("^/healthz$", status=429, times=1, retry_after=0.3)
    caplog.set_level(logging.INFO, logger="devbox_mcp.runloop")
    async with client_for(fault_proxy.url, backend.api_key) as client:
        await client._send("GET", "/healthz")
    delays = [r.retry_delay for r in caplog.records if hasattr(r, "retry_delay")]
    assert delays == [0.3], "the wait is the server's Retry-After, not the (0.01 s) backoff"


async def test_429_without_retries_left_raises_rate_limited(fault_proxy: FaultProxy, backend) -> None:
    fault_proxy.fail("^/healthz$", status=429, times=None, retry_after=0)
    async with client_for(fault_proxy.url, backend.api_key, RetryPolicy(max_attempts=2, initial_backoff=0.01)) as client:
        with pytest.raises(RateLimited) as info:
            await client._send("GET", "/healthz")
    assert info.value.retry_after == 0.0
    assert "wait and retry" in str(info.value)


async def test_post_with_idempotency_key_is_retried_with_the_same_key(fault_proxy: FaultProxy, backend) -> None:
    fault_proxy.fail("^/healthz$", status=503, times=2, method="POST")
    async with client_for(fault_proxy.url, backend.api_key) as client:
        with pytest.raises(ApiStatusError) as info:
            await client._send("POST", "/healthz", idempotency_key="devbox-mcp-test-key")
    assert info.value.status == 405, "after two injected 503s the real answer comes through"
    keys = [r.headers.get("x-request-id") for r in fault_proxy.seen("^/healthz$")]
    assert keys == ["devbox-mcp-test-key"] * 3


async def test_post_without_idempotency_key_is_never_retried(fault_proxy: FaultProxy, backend) -> None:
    fault_proxy.fail("^/healthz$", status=503, times=1, method="POST", forward=True)
    async with client_for(fault_proxy.url, backend.api_key) as client:
        with pytest.raises(ServerError):
            await client._send("POST", "/healthz")
    assert len(fault_proxy.seen("^/healthz$")) == 1, "a write that could act twice is sent once"


async def test_connection_errors_are_retried_then_reported(backend) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}", backend.api_key) as client:
        with pytest.raises(ConnectionFailed) as info:
            await client._send("GET", "/healthz")
    assert "could not reach the Runloop API for GET /healthz" in str(info.value)
    assert "RUNLOOP_BASE_URL" in str(info.value)


async def test_unknown_route_maps_to_not_found(backend) -> None:
    async with client_for(backend.base_url, backend.api_key) as client:
        with pytest.raises(NotFound) as info:
            await client._send("GET", "/v1/no_such_area/x")
    assert info.value.status == 404


async def test_wrong_key_maps_to_authentication_with_the_api_message(backend) -> None:
    async with client_for(backend.base_url, "dbxlocal_not_the_right_key_at_all") as client:
        with pytest.raises(Authentication) as info:
            await client._send("GET", "/v1/devboxes")
    assert "missing or wrong API key" in info.value.message
    assert "check RUNLOOP_API_KEY" in str(info.value)


# --- the API key never leaks -----------------------------------------------------------------


def _all_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        parts += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


async def test_key_never_appears_in_errors_or_logs(fault_proxy: FaultProxy, backend, caplog) -> None:
    key = backend.api_key
    caplog.set_level(logging.DEBUG)
    failures: list[BaseException] = []
    # A server that echoes the key in its error message.
    fault_proxy.fail("^/echo$", status=500, times=None, message=f"bad token Bearer {key}")
    async with client_for(fault_proxy.url, key) as client:
        assert key not in repr(client)
        for call in (
            lambda: client._send("GET", "/echo"),
            lambda: client._send("GET", "/v1/no_such_area"),
            lambda: client._send("POST", "/healthz", json_body={"k": 1}),
        ):
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - collecting every failure to inspect its text
                failures.append(exc)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}", key) as client:
        try:
            await client._send("GET", "/healthz")
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)
    assert len(failures) == 4
    assert "[redacted]" in str(failures[0])
    for exc in failures:
        assert key not in _all_text(exc)
    assert caplog.records, "logging was captured"
    assert key not in caplog.text


async def test_post_without_key_is_not_resent_after_a_dropped_connection(fault_proxy: FaultProxy, backend) -> None:
    fault_proxy.cut("^/healthz$", after_bytes=0, method="POST")
    async with client_for(fault_proxy.url, backend.api_key) as client:
        with pytest.raises(ConnectionFailed):
            await client._send("POST", "/healthz")
    assert len(fault_proxy.seen("^/healthz$")) == 1


def test_views_keep_fields_the_api_adds() -> None:
    from mcp_server.runloop import DevboxView

    view = DevboxView.model_validate({"id": "dbx_1", "status": "running", "brand_new_field": {"x": 1}})
    assert view.brand_new_field == {"x": 1}
    assert view.model_dump()["brand_new_field"] == {"x": 1}


async def test_a_body_that_is_not_the_view_is_a_clear_error(backend) -> None:
    from mcp_server.runloop import DevboxView, UnexpectedResponse

    async with client_for(backend.base_url, backend.api_key) as client:
        with pytest.raises(UnexpectedResponse) as info:
            await client._get("/healthz", DevboxView)
    assert "GET /healthz" in str(info.value) and "DevboxView" in str(info.value)


async def test_from_env_reads_url_key_and_headers(monkeypatch, fault_proxy: FaultProxy, backend) -> None:
    monkeypatch.setenv("RUNLOOP_BASE_URL", fault_proxy.url)
    monkeypatch.setenv("RUNLOOP_API_KEY", backend.api_key)
    monkeypatch.setenv("RUNLOOP_CUSTOM_HEADERS", "X-Env: yes")
    async with RunloopClient.from_env() as client:
        await client._send("GET", "/healthz")
    (seen,) = fault_proxy.seen("^/healthz$")
    assert seen.headers["authorization"] == f"Bearer {backend.api_key}" and seen.headers["x-env"] == "yes"


def test_a_malformed_key_or_url_is_refused_without_echoing_the_key() -> None:
    from mcp_server.runloop import InvalidArgument

    for bad in ("sk_secret_value_123\n", "sk secret value 123", "sk_secret_välue_123"):
        with pytest.raises(InvalidArgument) as info:
            RunloopClient("http://127.0.0.1:1", bad)
        assert bad.strip() not in _all_text(info.value) and "RUNLOOP_API_KEY" in str(info.value)
    with pytest.raises(InvalidArgument):
        RunloopClient("api.runloop.ai", "k")


def _api_methods() -> set[str]:
    """The public calls of RunloopClient that reach the API: coroutines and stream openers."""
    import inspect

    plumbing = {"aclose", "from_config", "from_env"}
    return {
        name for name, _ in inspect.getmembers(RunloopClient, inspect.isfunction)
        if not name.startswith("_") and name not in plumbing
    }


async def _drain(stream) -> None:  # noqa: ANN001 - any async iterator
    async for _ in stream:
        pass


async def test_design_every_call_is_retried_only_if_it_cannot_act_twice(fault_proxy: FaultProxy, backend) -> None:
    """Every public call, against a server answering 503 to everything: the ones retried are
    GETs or carry one idempotency key across attempts; the rest are sent exactly once."""
    fault_proxy.fail(".*", status=503, times=None, retry_after=0)
    d, e, a = "dbx_d", "exe_e", "axn_a"
    calls = {
        "create_devbox": lambda c: c.create_devbox(name="n"),
        "get_devbox": lambda c: c.get_devbox(d),
        "devbox_usage": lambda c: c.devbox_usage(d),
        "list_devboxes": lambda c: c.list_devboxes(),
        "update_devbox": lambda c: c.update_devbox(d, name="n"),
        "wait_for_devbox_status": lambda c: c.wait_for_devbox_status(d, ["running"], timeout_seconds=5),
        "shutdown_devbox": lambda c: c.shutdown_devbox(d),
        "suspend_devbox": lambda c: c.suspend_devbox(d),
        "resume_devbox": lambda c: c.resume_devbox(d),
        "snapshot_devbox_async": lambda c: c.snapshot_devbox_async(d),
        "snapshot_status": lambda c: c.snapshot_status("snp_s"),
        "list_snapshots": lambda c: c.list_snapshots(),
        "delete_snapshot": lambda c: c.delete_snapshot("snp_s"),
        "fork_devbox": lambda c: c.fork_devbox(d, count=2),
        "keep_alive_devbox": lambda c: c.keep_alive_devbox(d),
        "enable_tunnel": lambda c: c.enable_tunnel(d),  # a retry that finds the tunnel made: expose_port re-reads
        "get_devbox_logs": lambda c: c.get_devbox_logs(d),
        "read_file_contents": lambda c: c.read_file_contents(d, "f"),
        "write_file_contents": lambda c: c.write_file_contents(d, "f", "x"),
        "upload_file": lambda c: c.upload_file(d, "f", b"x"),
        "download_file": lambda c: c.download_file(d, "f"),
        "execute": lambda c: c.execute(d, "true"),
        "execute_async": lambda c: c.execute_async(d, "true"),
        "execute_sync": lambda c: c.execute_sync(d, "true"),
        "get_execution": lambda c: c.get_execution(d, e),
        "wait_for_execution": lambda c: c.wait_for_execution(d, e, timeout_seconds=5),
        "kill_execution": lambda c: c.kill_execution(d, e),
        "send_stdin": lambda c: c.send_stdin(d, e, text="x"),
        "create_network_policy": lambda c: c.create_network_policy(name="n", allowed_hostnames=["x.org"]),
        "get_network_policy": lambda c: c.get_network_policy("np_p"),
        "list_network_policies": lambda c: c.list_network_policies(name="n"),
        "create_axon": lambda c: c.create_axon(),
        "list_axons": lambda c: c.list_axons(),
        "get_axon": lambda c: c.get_axon(a),
        "publish": lambda c: c.publish(a, event_type="t", payload=1),
        "list_events": lambda c: c.list_events(a),
        "sql_query": lambda c: c.sql_query(a, "INSERT INTO t VALUES (1)"),
        "sql_query read_only": lambda c: c.sql_query(a, "SELECT 1", read_only=True),
        "sql_batch": lambda c: c.sql_batch(a, [{"sql": "INSERT INTO t VALUES (1)"}]),
        "watch_devbox": lambda c: _drain(c.watch_devbox(d, ["running"], timeout_seconds=5)),
        "stream_output": lambda c: _drain(c.stream_output(d, e, "stdout")),
        "subscribe_axon": lambda c: _drain(c.subscribe_axon(a)),
        "create_blueprint": lambda c: c.create_blueprint({"name": "n", "dockerfile": "FROM devbox-mcp"}),
        "get_blueprint": lambda c: c.get_blueprint("bpt_b"),
        "list_blueprints": lambda c: c.list_blueprints(name="n"),
        "blueprint_logs": lambda c: c.blueprint_logs("bpt_b"),
        "delete_blueprint": lambda c: c.delete_blueprint("bpt_b"),
        "create_pty_tunnel": lambda c: c.create_pty_tunnel(d),
        "pty_endpoint": lambda c: c.pty_endpoint(d),
        "pty_connect": lambda c: c.pty_connect(pty, "s"),
        "pty_attach": lambda c: c.pty_attach(pty, "s"),
        "pty_control": lambda c: c.pty_control(pty, "s", "resize", cols=80, rows=24),
        "pty_control signal": lambda c: c.pty_control(pty, "s", "signal", signal="SIGINT"),
    }
    pty = PtyEndpoint(f"{fault_proxy.url}/tunnel/k", "tunnel-token-not-a-key")
    covered = {name.split(" ")[0] for name in calls}
    assert covered == _api_methods(), "every API call of RunloopClient is in this table"
    sent_once: set[str] = set()
    async with client_for(fault_proxy.url, backend.api_key) as client:
        for name, call in calls.items():
            fault_proxy.requests.clear()
            with pytest.raises((ServerError, StreamError)):  # a stream says it failed N times
                await call(client)
            attempts = list(fault_proxy.requests)
            if len(attempts) == 1:
                sent_once.add(name)
                continue
            assert len(attempts) == FAST.max_attempts, name
            keys = {r.headers.get("x-request-id") for r in attempts}
            assert all(r.method == "GET" for r in attempts) or (len(keys) == 1 and None not in keys), name
            if name == "execute":
                assert len({json.loads(r.body)["command_id"] for r in attempts}) == 1
    assert sent_once == {"send_stdin", "sql_query", "sql_batch", "pty_control signal"}
