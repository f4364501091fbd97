"""Who gets in over HTTP: bearer token, DNS-rebinding protection, body limits, and what leaks (nothing)."""

from __future__ import annotations

import logging

import httpx
import pytest
from support.http_serving import http_client, serve_process, serve_small, small_server

from mcp_server.transport.http_app import HttpConfigError, HttpOptions, build_http_app, resolve_token

TOKEN = "sekret-token-for-tests-0123456789"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def url():
    with serve_small(
        HttpOptions(
            token=TOKEN,
            max_body_bytes=64 * 1024,
            allowed_hosts=("mcp.example.com",),
            allowed_origins=("https://app.example.com",),
        )
    ) as url:
        yield url


@pytest.fixture
def leaks(caplog: pytest.LogCaptureFixture):
    """Every response seen by the test; afterwards neither they nor the logs may contain the token."""
    caplog.set_level(logging.DEBUG)
    seen: list[httpx.Response] = []
    yield seen
    for response in seen:
        assert TOKEN not in response.text
        assert all(TOKEN not in v for v in response.headers.values())
    assert TOKEN not in caplog.text


def post(url: str, leaks: list, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
    kwargs.setdefault("json", INIT)
    response = httpx.post(url, headers={**MCP_HEADERS, **(headers or {})}, timeout=10, **kwargs)
    leaks.append(response)
    return response


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_right_token_initializes(url: str, leaks: list) -> None:
    response = post(url, leaks, auth())
    assert response.status_code == 200
    assert "mcp-session-id" in response.headers


def test_missing_token_gets_401_with_resource_metadata(url: str, leaks: list) -> None:
    response = post(url, leaks)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    metadata_url = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{metadata_url}"' in challenge
    assert "Authorization: Bearer" in response.json()["error_description"]
    metadata = httpx.get(metadata_url, timeout=10)
    leaks.append(metadata)
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == url
    assert metadata.json()["bearer_methods_supported"] == ["header"]


def test_wrong_token_gets_401_invalid_token(url: str, leaks: list) -> None:
    response = post(url, leaks, auth("not-the-token"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["error"] == "invalid_token"


def test_wrong_scheme_is_refused(url: str, leaks: list) -> None:
    response = post(url, leaks, {"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_case_insensitive(url: str, leaks: list, scheme: str) -> None:
    # RFC 7235: the auth scheme is a case-insensitive token.
    response = post(url, leaks, {"Authorization": f"{scheme} {TOKEN}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", ["access_token", "token"])
def test_token_in_query_string_is_refused_even_when_right(url: str, leaks: list, name: str) -> None:
    response = post(url + f"?{name}={TOKEN}", leaks, auth())
    assert response.status_code == 401
    assert "URL" in response.json()["error_description"]
    without_header = post(url + f"?{name}={TOKEN}", leaks)
    assert without_header.status_code == 401


def test_bad_host_gets_421_before_auth(url: str, leaks: list) -> None:
    response = post(url, leaks, {"Host": "evil.example.net"})
    assert response.status_code == 421
    assert "--allowed-host" in response.json()["error"]["message"]
    assert post(url, leaks, {**auth(), "Host": "evil.example.net:80"}).status_code == 421


def test_allowed_host_gets_in(url: str, leaks: list) -> None:
    assert post(url, leaks, {**auth(), "Host": "mcp.example.com"}).status_code == 200


def test_bad_origin_gets_403(url: str, leaks: list) -> None:
    response = post(url, leaks, {**auth(), "Origin": "http://evil.example.net"})
    assert response.status_code == 403
    assert "--allowed-origin" in response.json()["error"]["message"]


def test_allowed_and_loopback_origins_get_in(url: str, leaks: list) -> None:
    port = url.rsplit(":", 1)[1].split("/")[0]
    assert post(url, leaks, {**auth(), "Origin": "https://app.example.com"}).status_code == 200
    assert post(url, leaks, {**auth(), "Origin": f"http://localhost:{port}"}).status_code == 200


def test_oversized_body_gets_413_with_the_limit(url: str, leaks: list) -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * 70_000 + b'"}}'
    response = post(url, leaks, auth(), json=None, content=big)
    assert response.status_code == 413
    assert "65536" in response.json()["error"]["message"]


def test_oversized_chunked_body_gets_413(url: str, leaks: list) -> None:
    def chunks():
        yield b'{"pad":"'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}'

    response = post(url, leaks, auth(), json=None, content=chunks())
    assert response.status_code == 413


def test_healthz_is_open_and_says_nothing(url: str, leaks: list) -> None:
    response = httpx.get(url.replace("/mcp", "/healthz"), headers={"Host": "10.0.0.7:8765"}, timeout=10)
    leaks.append(response)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_no_auth_serves_without_token_on_loopback(leaks: list) -> None:
    with serve_small(HttpOptions(token=None)) as url:
        assert post(url, leaks).status_code == 200


def test_no_auth_refused_off_loopback() -> None:
    with pytest.raises(HttpConfigError, match="--no-auth"):
        resolve_token(True, "0.0.0.0", {})
    with pytest.raises(HttpConfigError):
        resolve_token(True, "192.168.1.20", {})
    assert resolve_token(True, "127.0.0.1", {}) == (None, False)
    assert resolve_token(True, "::1", {}) == (None, False)
    with pytest.raises(HttpConfigError):
        build_http_app(small_server, HttpOptions(token=None, host="0.0.0.0"))


def test_token_comes_from_env_or_is_generated() -> None:
    assert resolve_token(False, "0.0.0.0", {"DEVBOX_MCP_TOKEN": "abc"}) == ("abc", False)
    generated, was_generated = resolve_token(False, "127.0.0.1", {})
    assert was_generated and len(generated) >= 32
    assert resolve_token(False, "127.0.0.1", {})[0] != generated


@pytest.mark.anyio
async def test_real_server_keeps_token_and_runloop_key_out_of_logs_and_answers(
    tmp_path, backend, sdk
) -> None:
    """`devbox-mcp serve --transport http` against a Runloop API: refused and accepted calls alike."""
    devbox_id = sdk.devboxes.create_and_await_running().id
    env = {
        "RUNLOOP_API_KEY": backend.api_key,
        "RUNLOOP_BASE_URL": backend.base_url,
        "DEVBOX_MCP_TOKEN": TOKEN,
    }
    secrets = (TOKEN, backend.api_key)
    with serve_process(tmp_path, env=env) as server:
        async with httpx.AsyncClient(timeout=10) as raw:
            answers = [
                await raw.post(server.url, json=INIT, headers={**MCP_HEADERS, **headers})
                for headers in ({}, auth("wrong"), {"Authorization": TOKEN}, {**auth(), "Host": "evil.test"})
            ]
            answers.append(
                await raw.post(server.url + f"?access_token={TOKEN}", json=INIT, headers=MCP_HEADERS)
            )
        assert [a.status_code for a in answers] == [401, 401, 401, 421, 401]
        async with http_client(server.url, TOKEN) as client:
            ok = await client.call_tool(
                "execute", {"devbox_id": devbox_id, "command": "echo hi; env | grep -c RUNLOOP || true"}
            )
            missing = await client.call_tool("execute", {"devbox_id": "dbx_nope", "command": "true"})
            texts = [ok.content[0].text, missing.content[0].text]
        assert "hi" in texts[0] and missing.is_error
        for secret in secrets:
            assert secret not in server.stderr
            assert all(secret not in a.text and secret not in str(a.headers) for a in answers)
            assert all(secret not in text for text in texts)
        assert "bearer token from DEVBOX_MCP_TOKEN" in server.stderr


def test_preflight_from_allowed_origin_is_answered_without_token(url: str, leaks: list) -> None:
    response = httpx.options(
        url,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version",
        },
        timeout=10,
    )
    leaks.append(response)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    answer = post(url, leaks, {**auth(), "Origin": "https://app.example.com"})
    assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "mcp-session-id" in answer.headers["access-control-expose-headers"].lower()


def test_preflight_from_foreign_origin_is_refused(url: str, leaks: list) -> None:
    response = httpx.options(
        url, headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"}, timeout=10
    )
    leaks.append(response)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


def test_responses_do_not_name_the_server_software(url: str, leaks: list) -> None:
    response = httpx.get(url.replace("/mcp", "/healthz"), timeout=10)
    leaks.append(response)
    assert "server" not in response.headers


def test_the_token_is_not_in_the_options_repr() -> None:
    token = "tok_" + "s" * 40
    assert token not in repr(HttpOptions(token=token)) and token not in str(HttpOptions(token=token))
