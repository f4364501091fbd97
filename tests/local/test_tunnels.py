"""Tunnels: enable_tunnel / remove_tunnel driven by the official SDK, and the tunnel proxy driven
by real HTTP and WebSocket clients against a web app running inside real devboxes.

Waits are the API's `wait_for_status` long-polls or reads of what the app sends, never sleeps.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from runloop_api_client import BadRequestError
from support.backend_process import backend_process, free_port
from support.tunnels import proxy_address, start_app, tunnel_client, tunnel_url, wait_listening
from support.webapp import SOURCE
from websockets.sync.client import connect as ws_connect

from mcp_server.local.server import start_in_thread


@pytest.fixture(scope="module")
def web(sdk) -> Iterator[tuple[str, dict]]:  # noqa: ANN001
    """An isolated devbox with the web app on port 8000 and an open tunnel: (devbox id, tunnel view)."""
    view = sdk.devboxes.create_and_await_running()
    try:
        start_app(sdk, view.id)
        tunnel = sdk.devboxes.enable_tunnel(view.id).model_dump()
        yield view.id, tunnel
    finally:
        sdk.devboxes.shutdown(view.id)


def test_the_sdk_enables_shows_and_removes_a_tunnel(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running()
    try:
        tunnel = sdk.devboxes.enable_tunnel(view.id, auth_mode="authenticated", http_keep_alive=False)
        assert (tunnel.auth_mode, tunnel.http_keep_alive, tunnel.wake_on_http) == ("authenticated", False, False)
        assert tunnel.auth_token and tunnel.tunnel_key.isalnum() and tunnel.tunnel_key.islower()
        assert tunnel.url_template == f"http://{{port}}-{tunnel.tunnel_key}.localhost:{tunnel.url_template.rsplit(':', 1)[1]}"
        assert sdk.devboxes.retrieve(view.id).tunnel == tunnel
        with pytest.raises(BadRequestError, match="already has a tunnel"):
            sdk.devboxes.enable_tunnel(view.id)
        sdk.devboxes.remove_tunnel(view.id)
        assert sdk.devboxes.retrieve(view.id).tunnel is None
        sdk.devboxes.remove_tunnel(view.id)  # nothing to remove: still fine (a retried call)
        again = sdk.devboxes.enable_tunnel(view.id)  # the API's defaults: open, keep-alive, no wake
        assert (again.auth_mode, again.auth_token, again.http_keep_alive, again.wake_on_http) == ("open", None, True, False)
        assert again.tunnel_key != tunnel.tunnel_key
    finally:
        sdk.devboxes.shutdown(view.id)


def test_the_create_body_tunnel_is_in_the_view_from_the_start(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create(tunnel={"auth_mode": "authenticated", "wake_on_http": True})
    try:
        assert view.tunnel is not None and view.tunnel.auth_mode == "authenticated" and view.tunnel.wake_on_http
        assert sdk.devboxes.await_running(view.id).tunnel == view.tunnel
    finally:
        sdk.devboxes.shutdown(view.id)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [({"auth_mode": "public"}, "auth_mode"), ({"wake_on_http": "yes"}, "wake_on_http"), ({"port": 80}, "port")],
)
def test_a_bad_tunnel_config_is_refused_naming_the_field(http: httpx.Client, web, body: dict, fragment: str) -> None:  # noqa: ANN001
    devbox_id, _ = web
    r = http.post(f"/v1/devboxes/{devbox_id}/remove_tunnel")  # it must not be the one-tunnel rule that answers
    assert r.status_code == 200
    try:
        r = http.post(f"/v1/devboxes/{devbox_id}/enable_tunnel", json=body)
        assert r.status_code == 400, r.text
        assert fragment in r.json()["message"]
    finally:
        restored = http.post(f"/v1/devboxes/{devbox_id}/enable_tunnel")
        web[1].update(restored.json())


def test_only_a_running_devbox_gets_a_tunnel(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running()
    sdk.devboxes.shutdown(view.id)
    r = http.post(f"/v1/devboxes/{view.id}/enable_tunnel")
    assert r.status_code == 400 and "is shutdown" in r.json()["message"]
    assert http.post("/v1/devboxes/dbx_nope/enable_tunnel").status_code == 404


def test_a_web_app_answers_through_the_host_form_and_the_path_form(web) -> None:  # noqa: ANN001
    _, tunnel = web
    with tunnel_client(tunnel, 8000) as client:
        page = client.get("/")
        assert page.status_code == 200 and "Hello from the devbox" in page.text
        # Keep-alive passes through: two requests on one client connection reach the app on one connection.
        assert client.get("/conn").text == client.get("/conn").text
    base, _ = proxy_address(tunnel_url(tunnel, 8000))
    label = f"8000-{tunnel['tunnel_key']}"
    with httpx.Client(base_url=base, timeout=30) as plain:  # no tunnel host name: the path form
        r = plain.get(f"/tunnel/{label}/conn")
        assert r.status_code == 200 and r.text.startswith("127.0.0.1:")
        redirect = plain.get(f"/tunnel/{label}")  # relative links need the trailing slash
        assert redirect.status_code == 308 and redirect.headers["location"] == f"/tunnel/{label}/"
        assert "Hello from the devbox" in plain.get(f"/tunnel/{label}/", follow_redirects=True).text


def test_nothing_listening_unknown_keys_and_non_tunnel_hosts_get_a_one_line_error(web) -> None:  # noqa: ANN001
    _, tunnel = web
    with tunnel_client(tunnel, 8999, timeout=10) as client:
        r = client.get("/")
    assert r.status_code == 502
    assert r.text == f"nothing is listening on port 8999 in devbox {web[0]}\n"
    base, host = proxy_address(tunnel_url(tunnel, 8000))
    r = httpx.get(base + "/", headers={"Host": host.replace(tunnel["tunnel_key"], "x" * 20)}, timeout=10)
    assert r.status_code == 404 and "no tunnel has the key" in r.text
    r = httpx.get(base + "/", timeout=10)
    assert r.status_code == 404 and r.text.count("\n") == 1 and "not a tunnel address" in r.text


def test_an_authenticated_tunnel_needs_its_bearer_token(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running()
    try:
        start_app(sdk, view.id)
        tunnel = sdk.devboxes.enable_tunnel(view.id, auth_mode="authenticated")
        with tunnel_client(tunnel, 8000) as client:
            refused = client.get("/conn")
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            assert client.get("/conn", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert tunnel.auth_token not in refused.text
            ok = client.get("/conn", headers={"Authorization": f"bearer {tunnel.auth_token}"})
            assert ok.status_code == 200, ok.text
    finally:
        sdk.devboxes.shutdown(view.id)


def test_server_sent_events_stream_through(sdk, web) -> None:  # noqa: ANN001
    devbox_id, tunnel = web
    sdk.devboxes.execute_and_await_completion(devbox_id, command="rm -f /tmp/go")
    with tunnel_client(tunnel, 8000) as client, client.stream("GET", "/events") as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.iter_lines()
        assert next(lines) == "data: one"  # arrives while the app still holds "two" back
        sdk.devboxes.execute_and_await_completion(devbox_id, command="touch /tmp/go")
        assert [line for line in lines if line] == ["data: two"]


def test_a_websocket_echoes_through_the_tunnel(web) -> None:  # noqa: ANN001
    _, tunnel = web
    url = tunnel_url(tunnel, 8000)
    base, _ = proxy_address(url)
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    with ws_connect(url.replace("http://", "ws://") + "/ws", sock=sock, open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "hello"
        ws.send(b"\x00\x01" * 40_000)  # a binary message of 80 kB, larger than a socket buffer read
        assert ws.recv(timeout=10) == b"\x00\x01" * 40_000


@pytest.mark.parametrize("mode", ["host", "none"])
def test_tunnels_reach_devboxes_of_every_network_mode(sdk, mode: str) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(launch_parameters={"network_mode": mode})
    port = free_port() if mode == "host" else 8000  # `host` shares the host's ports
    try:
        start_app(sdk, view.id, port)
        tunnel = sdk.devboxes.enable_tunnel(view.id)
        with tunnel_client(tunnel, port) as client:
            assert "Hello from the devbox" in client.get("/").text
    finally:
        sdk.devboxes.shutdown(view.id)


def _app_devbox(sdk, **kwargs) -> str:  # noqa: ANN001, ANN003
    """A devbox whose entrypoint is the web app on port 8000 (so it serves again after a resume)."""
    devbox_id = sdk.devboxes.create_and_await_running(
        file_mounts={"webapp.py": SOURCE}, entrypoint="python3 webapp.py 8000", **kwargs
    ).id
    wait_listening(sdk, devbox_id)
    return devbox_id


def test_wake_on_http_resumes_a_suspended_devbox_and_serves(sdk) -> None:  # noqa: ANN001
    waking = _app_devbox(sdk, tunnel={"wake_on_http": True})
    sleeping = _app_devbox(sdk, tunnel={})
    try:
        for devbox_id in (waking, sleeping):
            sdk.devboxes.suspend(devbox_id)
            sdk.devboxes.await_suspended(devbox_id)
        with tunnel_client(sdk.devboxes.retrieve(sleeping).tunnel, 8000) as client:
            r = client.get("/")
        assert r.status_code == 502 and r.text == f"devbox {sleeping} is suspended; resume it first\n"
        with tunnel_client(sdk.devboxes.retrieve(waking).tunnel, 8000, timeout=90) as client:
            r = client.get("/")
        assert r.status_code == 200 and "Hello from the devbox" in r.text, r.text
        assert sdk.devboxes.retrieve(waking).status == "running"
    finally:
        for devbox_id in (waking, sleeping):
            sdk.devboxes.shutdown(devbox_id)


def test_tunnel_traffic_is_activity_only_with_http_keep_alive(sdk, http: httpx.Client) -> None:  # noqa: ANN001
    idle = {"after_idle": {"idle_time_seconds": 2, "on_idle": "suspend"}}
    kept = _app_devbox(sdk, launch_parameters=idle, tunnel={"http_keep_alive": True})
    not_kept = _app_devbox(sdk, launch_parameters=idle, tunnel={"http_keep_alive": False})
    stop = threading.Event()

    def stream(devbox_id: str) -> None:  # an event every 0.2 s through the tunnel, until told to stop
        with tunnel_client(sdk.devboxes.retrieve(devbox_id).tunnel, 8000) as client:
            with client.stream("GET", "/ticks") as response:
                for _ in response.iter_lines():
                    if stop.is_set():
                        return

    readers = [threading.Thread(target=stream, args=(d,), daemon=True) for d in (kept, not_kept)]
    try:
        for reader in readers:
            reader.start()
        # Two idle times later the devbox whose tunnel counts is still running; the other idled out.
        waited = http.post(f"/v1/devboxes/{kept}/wait_for_status", json={"statuses": ["suspended"], "timeout_seconds": 4})
        assert waited.status_code == 408, waited.text
        assert sdk.devboxes.await_suspended(not_kept).status == "suspended"
    finally:
        stop.set()
        for devbox_id in (kept, not_kept):
            sdk.devboxes.shutdown(devbox_id)
        for reader in readers:
            reader.join(timeout=10)


def test_a_tunnel_survives_a_backend_restart(tmp_path: Path) -> None:
    from runloop_api_client import Runloop

    first = start_in_thread(tmp_path)
    sdk = Runloop(bearer_token=first.api_key, base_url=first.base_url, max_retries=0)
    try:
        devbox_id = _app_devbox(sdk, tunnel={"auth_mode": "authenticated"})
        before = sdk.devboxes.retrieve(devbox_id).tunnel
    finally:
        sdk.close()
        first.stop()
    second = start_in_thread(tmp_path, first.api_key)
    sdk = Runloop(bearer_token=second.api_key, base_url=second.base_url, max_retries=0)
    try:
        after = sdk.devboxes.retrieve(devbox_id).tunnel
        assert (after.tunnel_key, after.auth_token, after.create_time_ms) == (before.tunnel_key, before.auth_token, before.create_time_ms)
        sdk.devboxes.resume(devbox_id)
        sdk.devboxes.await_running(devbox_id)
        wait_listening(sdk, devbox_id)  # the entrypoint starts again with the devbox
        with tunnel_client(after, 8000, headers={"Authorization": f"Bearer {after.auth_token}"}) as client:
            r = client.get("/")
        assert r.status_code == 200 and "Hello from the devbox" in r.text
        sdk.devboxes.shutdown(devbox_id)
    finally:
        sdk.close()
        second.stop()


def test_local_api_serves_tunnels_where_told_and_says_where(tmp_path: Path) -> None:
    tunnel_port = free_port()
    with backend_process(tmp_path / "data", tmp_path / "log", args=["--tunnel-port", str(tunnel_port)]) as backend:
        r = httpx.get(f"http://127.0.0.1:{tunnel_port}/", timeout=10)
        assert r.status_code == 404 and "not a tunnel address" in r.text
        assert f"tunnels: http://{{port}}-{{tunnel_key}}.localhost:{tunnel_port}/" in backend.log
