"""PTY sessions, create_pty_tunnel and logs/tail against the real backend and real sandboxes.

The official SDK drives create_pty_tunnel and logs/tail; a real WebSocket client (`websockets`)
drives the data plane, with the tunnel's bearer token, as the MCP terminal tools do.
Synchronisation is by output (the shell prints a marker the test waits for), never by sleeping.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from runloop_api_client import BadRequestError, NotFoundError
from runloop_api_client._streaming import Stream
from runloop_api_client.types.devboxes.devbox_logs_list_view import Log
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from mcp_server.local.pty import ATTACHED_HIGH_WATER, DETACHED_KEEP, READ_CHUNK, PtyManager
from mcp_server.local.server import RunningBackend

WAIT = 30.0  # seconds any one expected output may take on a loaded machine


@pytest.fixture(scope="module")
def devbox(sdk) -> Iterator[str]:
    view = sdk.devboxes.create_and_await_running(name="pty")
    yield view.id
    sdk.devboxes.shutdown(view.id)


class Tunnel:
    """The PTY paths of one devbox through a tunnel: the GET, control and the WebSocket."""

    def __init__(self, base_url: str, tunnel_key: str, auth_token: str) -> None:
        self.base_url = base_url
        self.prefix = f"/tunnel/{tunnel_key}"
        self.headers = {"Authorization": f"Bearer {auth_token}"}

    def open(self, name: str, **params: int) -> httpx.Response:
        return httpx.get(f"{self.base_url}{self.prefix}/pty/{name}", params=params, headers=self.headers, timeout=60)

    def control(self, name: str, **body: object) -> httpx.Response:
        return httpx.post(f"{self.base_url}{self.prefix}/pty/{name}/control", json=body, headers=self.headers, timeout=60)

    def attach(self, name: str, *, receive_buffer: int | None = None, **params: int) -> Terminal:
        response = self.open(name, **params)
        assert response.status_code == 200, response.text
        return self.connect(response.json()["connect_url"], receive_buffer=receive_buffer)

    def connect(self, connect_url: str, *, receive_buffer: int | None = None) -> Terminal:
        """`receive_buffer`: a small kernel buffer for the client's socket (a slow client's reads stop
        the stream sooner; loopback's autotuned buffers hold tens of MB)."""
        url = self.base_url.replace("http://", "ws://", 1) + connect_url
        sock = None
        if receive_buffer is not None:
            host, port = self.base_url.removeprefix("http://").rsplit(":", 1)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.connect((host, int(port)))
        ws = connect(
            url, sock=sock, additional_headers=self.headers, open_timeout=WAIT, max_size=None, max_queue=4,
            compression=None,  # raw bytes on the wire: deflate would shrink a flood of one letter to nothing
        )  # fmt: skip
        return Terminal(ws)


class Terminal:
    """A WebSocket client on a PTY session: what it received, and waiting for text in it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received = bytearray()

    def send(self, text: str) -> None:
        self.ws.send(text.encode())

    def expect(self, pattern: str) -> re.Match[bytes]:
        """Read until `pattern` (a regex) matches the output received since the last match."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + WAIT
        while not (match := regex.search(self.received)):
            remaining = deadline - time.monotonic()
            try:
                self.received += self.ws.recv(timeout=max(remaining, 0))
            except TimeoutError:
                raise AssertionError(f"no {pattern!r} in the terminal's output: {bytes(self.received[-2000:])!r}") from None
        del self.received[: match.end()]
        return match

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def marker() -> str:
    return uuid.uuid4().hex[:12]


def ready(term: Terminal) -> None:
    """Wait for the shell to read commands: a marker it echoes back."""
    mark = marker()
    term.send(f"echo ready-{mark}-$((1+1))\n")
    term.expect(f"ready-{mark}-2")


@pytest.fixture
def tunnel(sdk, backend: RunningBackend, devbox: str) -> Tunnel:
    view = sdk.devboxes.create_pty_tunnel(devbox)
    return Tunnel(backend.base_url, view.tunnel_key, view.auth_token)


def ptys_of(backend: RunningBackend) -> PtyManager:
    return backend._server.config.app.state.ptys  # the backend in this process, for what only it knows


def rss_bytes() -> int:
    """This process's resident memory (the backend runs on a thread of it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# -- create_pty_tunnel ---------------------------------------------------------------------


def test_create_pty_tunnel_gives_a_fresh_key_and_token_per_call(sdk, devbox):
    first = sdk.devboxes.create_pty_tunnel(devbox)
    second = sdk.devboxes.create_pty_tunnel(devbox)
    assert first.tunnel_key and first.auth_token
    assert first.auth_token != second.auth_token and first.tunnel_key != second.tunnel_key


def test_create_pty_tunnel_refuses_a_devbox_that_is_not_running_or_unknown(sdk):
    view = sdk.devboxes.create_and_await_running(name="pty-stopped")
    sdk.devboxes.shutdown(view.id)
    with pytest.raises(BadRequestError, match="shutdown"):
        sdk.devboxes.create_pty_tunnel(view.id)
    with pytest.raises(NotFoundError):
        sdk.devboxes.create_pty_tunnel("dbx_does_not_exist")


def test_the_pty_paths_require_the_tunnel_token(tunnel: Tunnel, backend: RunningBackend, sdk):
    url = f"{backend.base_url}{tunnel.prefix}/pty/auth"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {backend.api_key}"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{backend.base_url}/tunnel/nope/pty/auth", headers=tunnel.headers).status_code == 404
    with pytest.raises(Exception, match="401"):  # refused at the upgrade, as an HTTP answer
        connect(url.replace("http://", "ws://") + "/connect", open_timeout=WAIT)
    # Another devbox's token opens nothing here.
    other_devbox = sdk.devboxes.create_and_await_running(name="pty-other")
    other = sdk.devboxes.create_pty_tunnel(other_devbox.id)
    assert httpx.get(url, headers={"Authorization": f"Bearer {other.auth_token}"}).status_code == 401
    sdk.devboxes.shutdown(other_devbox.id)


def test_a_websocket_anywhere_else_needs_the_api_key(backend: RunningBackend):
    with pytest.raises(Exception, match="401"):
        connect(backend.base_url.replace("http://", "ws://") + "/v1/devboxes", open_timeout=WAIT)


def test_create_ssh_key_says_what_is_missing(sdk, devbox):
    from runloop_api_client import APIStatusError

    with pytest.raises(APIStatusError) as caught:
        sdk.devboxes.create_ssh_key(devbox)
    assert caught.value.status_code == 501
    assert "SSH server" in str(caught.value) and "create_pty_tunnel" in str(caught.value)


# -- sessions ------------------------------------------------------------------------------


def test_a_session_is_an_interactive_login_shell_of_the_devbox_user(tunnel: Tunnel):
    view = tunnel.open("login", cols=100, rows=30).json()
    assert view["created"] is True and view["attached"] is False
    assert (view["cols"], view["rows"]) == (100, 30)
    assert view["connect_url"] == f"{tunnel.prefix}/pty/login/connect"
    assert view["idle_ttl_seconds"] > 0
    with tunnel.connect(view["connect_url"]) as term:
        term.send("echo T=$TERM; stty size; id -un; shopt -q login_shell && echo LOGIN; echo E=${GIT_EDITOR-unset}\n")
        term.expect(r"T=xterm-256color")
        term.expect(r"30 100")
        term.expect(r"\nuser\r")
        term.expect(r"LOGIN")
        term.expect(r"E=unset")
    assert tunnel.control("login", action="close").json() == {"session_name": "login", "status": "closed"}


def test_a_python_repl_keeps_its_state_between_inputs(tunnel: Tunnel):
    with tunnel.attach("repl") as term:
        ready(term)
        term.send("python3 -q\n")
        term.expect(">>> ")
        term.send("x = 41\n")
        term.expect(">>> ")
        term.send("x += 1\n")
        term.expect(">>> ")
        term.send("print('x is', x)\n")
        term.expect(r"x is 42")
    tunnel.control("repl", action="close")


def test_resize_reaches_the_program_as_sigwinch(tunnel: Tunnel):
    program = (
        "import os, signal; "
        "signal.signal(signal.SIGWINCH, lambda *_: print('winch', *os.get_terminal_size(), flush=True)); "
        "print('wait' + 'ing', flush=True); signal.pause()"
    )
    with tunnel.attach("resize", cols=80, rows=24) as term:
        ready(term)
        term.send(f'python3 -c "{program}"\n')
        term.expect(r"waiting")
        response = tunnel.control("resize", action="resize", cols=132, rows=50)
        assert response.json() == {"session_name": "resize", "status": "running"}
        term.expect(r"winch 132 50")
    assert tunnel.open("resize").json()["cols"] == 132
    tunnel.control("resize", action="close")


def test_signal_sigint_interrupts_the_foreground_sleep(tunnel: Tunnel):
    with tunnel.attach("interrupt") as term:
        ready(term)
        term.send("sh -c 'echo slee''ping; exec sleep 100'\n")
        term.expect("sleeping")  # printed by the foreground job itself: it is in the foreground
        assert tunnel.control("interrupt", action="signal", signal="SIGINT").status_code == 200
        term.send("echo status=$?\n")
        term.expect(r"status=130")
    tunnel.control("interrupt", action="close")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"action": "signal", "signal": "SIGNOPE"}, "not a POSIX signal name"),
        ({"action": "signal"}, "signal is required"),
        ({"action": "resize", "cols": 0, "rows": 10}, "cols must be between 1 and 1000"),
        ({"action": "resize", "cols": 80, "rows": 1001}, "rows must be between 1 and 1000"),
        ({"action": "resize", "cols": 80}, "rows is missing"),
        ({"action": "explode"}, "action"),
        ({}, "action is required"),
    ],
)
def test_bad_control_parameters_are_refused_with_400(tunnel: Tunnel, body: dict, fragment: str):
    tunnel.open("badcontrol")
    response = tunnel.control("badcontrol", **body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]


def test_bad_names_sizes_and_unknown_sessions(tunnel: Tunnel):
    assert tunnel.open("bad name!").status_code == 400
    assert tunnel.open("x" * 257).status_code == 400
    assert tunnel.open("size", cols=0, rows=10).status_code == 400
    assert tunnel.open("size", cols=80).status_code == 400
    response = tunnel.control("never-opened", action="close")
    assert response.status_code == 404 and "never-opened" in response.json()["message"]
    with tunnel.connect(f"{tunnel.prefix}/pty/never-opened/connect") as term:
        with pytest.raises(ConnectionClosed) as closed:
            term.ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


def test_a_reconnect_gets_the_same_shell_and_the_output_written_meanwhile(tunnel: Tunnel, sdk, devbox: str):
    mark = marker()
    with tunnel.attach("reconnect") as term:
        ready(term)
        term.send(f"export MARK={mark}; read -r line; echo got-$line-$MARK\n")
    view = tunnel.open("reconnect").json()
    assert view["created"] is False
    with tunnel.connect(view["connect_url"]) as term:
        term.send("again\n")
        term.expect(f"got-again-{mark}")
    # Output the shell writes while no client is attached waits for the next one.
    gate = f"/tmp/gate-{mark}"
    with tunnel.attach("reconnect") as term:
        term.send(f"until [ -e {gate} ]; do sleep 0.01; done; echo while-$((6*7))-away\n")
    sdk.devboxes.execute_and_await_completion(devbox, command=f"touch {gate}")  # the client has left
    with tunnel.attach("reconnect") as term:
        term.expect("while-42-away")
    tunnel.control("reconnect", action="close")


def test_a_second_concurrent_attach_is_refused_with_4409(tunnel: Tunnel):
    with tunnel.attach("single") as first:
        ready(first)
        assert tunnel.open("single").json()["attached"] is True  # the bootstrap itself always succeeds
        with tunnel.attach("single") as second:
            with pytest.raises(ConnectionClosed) as closed:
                second.ws.recv(timeout=WAIT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
        ready(first)  # the first client is untouched
    tunnel.control("single", action="close")


def test_close_hangs_up_and_the_same_name_starts_a_fresh_shell(tunnel: Tunnel):
    mark = marker()
    with tunnel.attach("closing") as term:
        ready(term)
        term.send(f"export MARK={mark}\n")
        ready(term)
        assert tunnel.control("closing", action="close").json()["status"] == "closed"
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                term.ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert tunnel.control("closing", action="resize", cols=10, rows=10).status_code == 404
    view = tunnel.open("closing").json()
    assert view["created"] is True
    with tunnel.connect(view["connect_url"]) as term:
        term.send("echo mark=${MARK:-none}\n")
        term.expect("mark=none")
    tunnel.control("closing", action="close")


def test_the_shell_exiting_ends_the_session(tunnel: Tunnel):
    with tunnel.attach("exiting") as term:
        ready(term)
        term.send("exit 3\n")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                term.ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert "status 3" in closed.value.rcvd.reason
    assert tunnel.open("exiting").json()["created"] is True
    tunnel.control("exiting", action="close")


def test_input_a_program_does_not_read_waits_and_close_still_ends_the_session(tunnel: Tunnel):
    with tunnel.attach("unread-input") as term:
        ready(term)
        term.send("sh -c 'echo not-rea''ding; exec sleep 100'\n")
        term.expect("not-reading")
        term.ws.send(b"z" * 2_000_000)  # far more than the terminal's input buffer holds
        assert tunnel.control("unread-input", action="close").json()["status"] == "closed"
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                term.ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_a_flood_stops_at_the_bound_while_the_client_is_slow(tunnel: Tunnel, backend: RunningBackend):
    total = 50_000_000
    ptys = ptys_of(backend)
    with tunnel.attach("flood", receive_buffer=64 * 1024) as term:
        ready(term)
        before = rss_bytes()
        term.send(f"head -c {total} /dev/zero | tr '\\0' x; echo; echo flood-$((40+2))-end\n")
        # The client reads nothing: the backend must stop reading the pty rather than buffer 50 MB.
        deadline = time.monotonic() + WAIT
        session = ptys.find(tunnel_devbox(ptys, tunnel), "flood")
        assert session is not None
        while not session.waiting_for_client:
            assert time.monotonic() < deadline, "the backend never stopped reading for a slow client"
        assert session.pending_bytes <= ATTACHED_HIGH_WATER + READ_CHUNK
        stalled = rss_bytes()
        received = 0
        tail = b""
        while b"flood-42-end" not in tail:  # the output, not the echoed command
            chunk = term.ws.recv(timeout=WAIT)
            received += chunk.count(b"x")
            tail = (tail + chunk)[-4096:]
        after = rss_bytes()
    assert received >= total  # all of it, once the client reads
    assert stalled - before < 30 * 2**20 and after - before < 30 * 2**20, (before, stalled, after)
    tunnel.control("flood", action="close")


def test_output_while_detached_is_bounded_to_the_latest(tunnel: Tunnel, sdk, devbox: str):
    gate, done = f"/tmp/gate-{marker()}", f"/tmp/done-{marker()}"
    with tunnel.attach("detached-flood") as term:
        ready(term)
        term.send(
            f"until [ -e {gate} ]; do sleep 0.01; done; head -c 20000000 /dev/zero | tr '\\0' y; "
            f"echo; echo detached-$((6*7))-end; touch {done}\n"
        )
    sdk.devboxes.execute_and_await_completion(devbox, command=f"touch {gate}")  # the client has left
    deadline = time.monotonic() + WAIT * 2
    while sdk.devboxes.execute_and_await_completion(devbox, command=f"test -e {done}").exit_status != 0:
        assert time.monotonic() < deadline, "the detached flood never finished"
    with tunnel.attach("detached-flood") as term:
        received = bytearray()
        while b"detached-42-end" not in received:
            received += term.ws.recv(timeout=WAIT)
    assert len(received) <= DETACHED_KEEP + 4096  # the latest MiB, not the 20 MB
    assert received.count(b"y") > DETACHED_KEEP // 2
    tunnel.control("detached-flood", action="close")


def tunnel_devbox(ptys: PtyManager, tunnel: Tunnel) -> str:
    return ptys.tunnels.devbox_for(tunnel.prefix.rsplit("/", 1)[1], tunnel.headers["Authorization"])


# -- the idle TTL and the devbox lifecycle -------------------------------------------------


def test_after_the_idle_ttl_the_same_name_starts_a_fresh_shell(
    tunnel: Tunnel, backend: RunningBackend, monkeypatch: pytest.MonkeyPatch
):
    # The shared backend's TTL, lowered for this test (DEVBOX_PTY_IDLE_TTL_SECONDS sets it at start-up;
    # a second backend in this process would compete with the first for the machine's id range).
    monkeypatch.setattr(ptys_of(backend), "idle_ttl_seconds", 1.0)
    mark = marker()
    with tunnel.attach("ttl") as term:
        assert tunnel.open("ttl").json()["idle_ttl_seconds"] == 1
        ready(term)
        term.send(f"export MARK={mark}\n")
        ready(term)
    deadline = time.monotonic() + WAIT
    while tunnel.control("ttl", action="resize", cols=80, rows=24).status_code == 200:  # control keeps no session alive
        assert time.monotonic() < deadline, "the detached session outlived its idle TTL"
    with tunnel.attach("ttl") as term:
        term.send("echo mark=${MARK:-none}\n")
        term.expect("mark=none")
    tunnel.control("ttl", action="close")


def test_suspend_and_resume_replace_the_shell_and_end_the_tunnel(sdk, backend: RunningBackend):
    devbox = sdk.devboxes.create_and_await_running(name="pty-suspend")
    view = sdk.devboxes.create_pty_tunnel(devbox.id)
    tunnel = Tunnel(backend.base_url, view.tunnel_key, view.auth_token)
    with tunnel.attach("lifecycle") as term:
        ready(term)
        term.send("export MARK=before\n")
        ready(term)
        sdk.devboxes.suspend(devbox.id)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                term.ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert "devbox stopped" in closed.value.rcvd.reason
    assert tunnel.open("lifecycle").status_code == 404  # the tunnel ended with the sandbox
    sdk.devboxes.resume(devbox.id)
    sdk.devboxes.await_running(devbox.id)
    view = sdk.devboxes.create_pty_tunnel(devbox.id)
    tunnel = Tunnel(backend.base_url, view.tunnel_key, view.auth_token)
    assert tunnel.open("lifecycle").json()["created"] is True
    with tunnel.attach("lifecycle") as term:
        term.send("echo mark=${MARK:-none}\n")
        term.expect("mark=none")
    sdk.devboxes.shutdown(devbox.id)


# -- logs/tail -----------------------------------------------------------------------------


def tail(sdk, devbox: str, **params: str) -> Stream[Log]:
    return sdk.get(
        f"/v1/devboxes/{devbox}/logs/tail", cast_to=Log, stream=True, stream_cls=Stream[Log], options={"params": params}
    )


def test_logs_tail_streams_past_then_live_entries_and_ends_at_shutdown(sdk):
    devbox = sdk.devboxes.create_and_await_running(name="pty-logs")
    first = sdk.devboxes.execute_and_await_completion(devbox.id, command="true")
    past = [log.model_dump(exclude_none=True) for log in sdk.devboxes.logs.list(devbox.id).logs]
    stream = tail(sdk, devbox.id)
    entries = iter(stream)
    assert [next(entries).model_dump(exclude_none=True) for _ in past] == past  # the same entries as /logs
    second = sdk.devboxes.execute_and_await_completion(devbox.id, command="exit 4")
    live = [next(entries) for _ in range(2)]
    assert [(e.cmd_id, e.exit_code) for e in live] == [(second.execution_id, None), (second.execution_id, 4)]
    assert first.execution_id != second.execution_id
    sdk.devboxes.shutdown(devbox.id)
    rest = list(entries)  # ends by itself once the devbox is shut down
    assert all(e.source for e in rest)
    stream.close()


def test_logs_tail_filters_by_execution_and_refuses_shell_name(sdk, http: httpx.Client):
    devbox = sdk.devboxes.create_and_await_running(name="pty-logs-filter")
    run = sdk.devboxes.execute_and_await_completion(devbox.id, command="echo hi")
    sdk.devboxes.shutdown(devbox.id)
    entries = list(tail(sdk, devbox.id, execution_id=run.execution_id))
    assert entries and all(e.cmd_id == run.execution_id for e in entries)
    response = http.get(f"/v1/devboxes/{devbox.id}/logs/tail", params={"shell_name": "main"})
    assert response.status_code == 400 and "shell_name" in response.json()["message"]
    assert http.get("/v1/devboxes/dbx_nope/logs/tail").status_code == 404

