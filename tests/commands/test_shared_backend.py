"""One shared embedded backend per data directory: devboxes outlive the `devbox-mcp` process that
created them, processes starting at once share one backend, a dead backend is replaced, an idle
one stops itself, and a signal stops a `devbox-mcp` server at once.

Every process here is real: `devbox-mcp serve` over stdio driven by the MCP SDK's client, the
detached backend it starts, bubblewrap sandboxes. The `data_dir` fixture stops the backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from support.http_serving import serve_process
from support.mcp_client import call_ok, structured, text_of

from mcp_server.local import service

pytestmark = pytest.mark.anyio

EXE = str(Path(sys.executable).with_name("devbox-mcp"))
PAGE = "hello from the first process"
# A server started in the background, as an agent does: the command returns, the server stays.
SERVE_IN_BACKGROUND = (
    f"mkdir -p ~/site && echo '{PAGE}' > ~/site/index.html && cd ~/site && "
    "nohup python3 -m http.server 8080 --bind 127.0.0.1 >/dev/null 2>&1 &"
)
FETCH = (
    "python3 -c \"import urllib.request as u; "
    "print(u.urlopen('http://127.0.0.1:8080/', timeout=5).read().decode())\""
)
BACKEND_LINE = re.compile(r"(started|using) the embedded backend at (\S+) \(pid (\d+)")


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOOP_", "DEVBOX_LOCAL_"))}
    env.update(extra)
    return env


@asynccontextmanager
async def session(data_dir: Path, log: Path, **env: str) -> AsyncIterator[Client]:
    """One `devbox-mcp serve` process on `data_dir` (embedded backend), its stderr appended to `log`."""
    params = StdioServerParameters(
        command=EXE, args=["serve", "--data-dir", str(data_dir)], env=server_env(**env)
    )
    with log.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="auto") as client:
            yield client


def wait_until(condition: Callable[[], object], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def backend_processes(data_dir: Path) -> list[int]:
    """Live `local-api` processes serving `data_dir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not service.process_alive(int(entry.name)):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"local-api" in argv and str(data_dir).encode() in argv:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (its sandboxes: bwrap, the sandbox's processes, slirp4netns)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def backend_lines(log: Path) -> list[tuple[str, str, int]]:
    return [(m[1], m[2], int(m[3])) for m in BACKEND_LINE.finditer(log.read_text())]


async def answers(client: Client, devbox: str) -> str:
    """The page the background server serves, once it answers (bounded)."""
    with anyio.fail_after(60):
        while True:
            result = await client.call_tool("execute", {"devbox_id": devbox, "command": FETCH})
            if PAGE in text_of(result):
                return text_of(result)
            await anyio.sleep(0.1)


async def test_a_devbox_and_its_background_server_outlive_the_process_that_started_them(
    data_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "stderr.log"
    async with session(data_dir, log) as first:
        devbox = structured(await call_ok(first, "create_devbox", {"name": "outlives"}))["id"]
        await call_ok(first, "execute", {"devbox_id": devbox, "command": SERVE_IN_BACKGROUND})
        await answers(first, devbox)
    async with session(data_dir, log) as second:
        assert structured(await call_ok(second, "get_devbox", {"devbox_id": devbox}))["status"] == "running"
    async with session(data_dir, log) as third:
        fetched = await call_ok(third, "execute", {"devbox_id": devbox, "command": FETCH})
        assert PAGE in text_of(fetched)  # the server the first process started, still up, never restarted
    state = service.read_state(data_dir)
    assert state is not None
    assert backend_lines(log) == [
        ("started", state.base_url, state.pid),
        ("using", state.base_url, state.pid),
        ("using", state.base_url, state.pid),
    ]
    assert backend_processes(data_dir) == [state.pid]
    # The discovery file is the only place the key is written: owner-only, not on a command line or in a log.
    assert stat.S_IMODE((data_dir / service.STATE_FILE).stat().st_mode) == 0o600
    assert state.api_key.encode() not in proc_file(state.pid, "cmdline")
    assert state.api_key.encode() not in proc_file(state.pid, "environ")
    for text in (log.read_text(), (data_dir / service.LOG_FILE).read_text()):
        assert state.api_key not in text


async def test_two_processes_starting_at_the_same_instant_share_one_backend(
    data_dir: Path, tmp_path: Path
) -> None:
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    async with session(data_dir, logs[0]) as a, session(data_dir, logs[1]) as b:
        # Both are up; their first calls, which find or start the backend, go out together.
        async with anyio.create_task_group() as tg:
            for client in (a, b):
                tg.start_soon(call_ok, client, "list_devboxes", {})
    (first,), (second,) = backend_lines(logs[0]), backend_lines(logs[1])
    assert sorted([first[0], second[0]]) == ["started", "using"]
    assert first[1:] == second[1:]
    state = service.read_state(data_dir)
    assert state is not None and (state.base_url, state.pid) == first[1:]
    assert backend_processes(data_dir) == [state.pid]


async def test_a_killed_backend_is_replaced_and_its_devboxes_come_back_resumable(
    data_dir: Path, tmp_path: Path
) -> None:
    log = tmp_path / "stderr.log"
    async with session(data_dir, log) as first:
        devbox = structured(await call_ok(first, "create_devbox", {"name": "survivor"}))["id"]
        await call_ok(first, "write_file", {"devbox_id": devbox, "path": "kept.txt", "contents": "kept\n"})
        old = service.read_state(data_dir)
        assert old is not None
        sandboxes = descendants(old.pid)
        assert sandboxes, "a running devbox has sandbox processes below the backend"
        os.kill(old.pid, signal.SIGKILL)
        wait_until(lambda: not service.is_served(data_dir), "the killed backend let go of the data dir")
        # Its sandboxes die with it; the state file it left names a dead backend.
        wait_until(lambda: not any(service.process_alive(pid) for pid in sandboxes), "its sandboxes are gone")
        assert service.read_state(data_dir) == old

        async with session(data_dir, log) as second:  # the next process replaces it
            got = structured(await call_ok(second, "get_devbox", {"devbox_id": devbox}))
            assert got["status"] == "suspended"
        new = service.read_state(data_dir)
        assert new is not None and new.pid != old.pid

        # The first process, still open, follows to the new backend on its next call.
        resumed = structured(await call_ok(first, "resume_devbox", {"devbox_id": devbox}))
        assert resumed["status"] == "running"
        read = await call_ok(first, "read_file", {"devbox_id": devbox, "path": "kept.txt"})
        assert "kept" in text_of(read)
    assert [line[0] for line in backend_lines(log)] == ["started", "started", "using"]
    assert backend_processes(data_dir) == [new.pid]


async def test_local_api_stop_stops_the_sandboxes_and_suspends_the_devboxes(
    data_dir: Path, tmp_path: Path
) -> None:
    async with session(data_dir, tmp_path / "stderr.log") as client:
        devbox = structured(await call_ok(client, "create_devbox", {"name": "stopped"}))["id"]
    state = service.read_state(data_dir)
    assert state is not None
    sandboxes = descendants(state.pid)
    assert sandboxes
    with anyio.fail_after(60):
        done = await anyio.run_process([EXE, "local-api", "--stop", "--data-dir", str(data_dir)], check=False)
    assert done.returncode == 0 and f"stopped the backend (pid {state.pid})" in done.stderr.decode()
    assert not service.is_served(data_dir) and service.read_state(data_dir) is None
    # A clean stop: sandboxes stopped and the devbox recorded as suspended before the backend let go.
    assert not any(service.process_alive(pid) for pid in sandboxes)
    record = json.loads((data_dir / "devboxes" / devbox / "devbox.json").read_text())
    assert record["status"] == "suspended"


async def test_an_idle_backend_stops_itself_but_not_while_a_devbox_runs(tmp_path: Path) -> None:
    busy, idle = tmp_path / "busy", tmp_path / "idle"
    try:
        # `busy` would stop after 0.5 s idle, `idle` after 1.5 s: when `idle` has stopped, `busy` has
        # had no request for longer than its limit, so only its running devbox can have kept it.
        async with session(busy, tmp_path / "busy.log", DEVBOX_LOCAL_IDLE_SHUTDOWN_SECONDS="0.5") as client:
            devbox = structured(await call_ok(client, "create_devbox", {"name": "keeps-it-up"}))["id"]
        async with session(idle, tmp_path / "idle.log", DEVBOX_LOCAL_IDLE_SHUTDOWN_SECONDS="1.5") as client:
            await call_ok(client, "list_devboxes", {})
        wait_until(lambda: not service.is_served(idle), "the idle backend stopped")
        assert service.read_state(idle) is None  # it removed its state file
        assert "idle for 1.5 s with no running devbox: stopping" in (idle / service.LOG_FILE).read_text()
        assert service.is_served(busy)

        async with session(busy, tmp_path / "busy.log", DEVBOX_LOCAL_IDLE_SHUTDOWN_SECONDS="0.5") as client:
            await call_ok(client, "shutdown_devbox", {"devbox_id": devbox})
        wait_until(lambda: not service.is_served(busy), "the backend stopped once its devbox was down")
        assert service.read_state(busy) is None
    finally:
        service.stop(busy)
        service.stop(idle)


CLIENT = {"name": "raw", "version": "1"}


def initialize(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin and proc.stdout
    for message in (
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": CLIENT}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ):  # fmt: skip
        proc.stdin.write(json.dumps(message) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["id"] == 1


def call_and_wait_for(
    proc: subprocess.Popen[str], name: str, arguments: dict, until: Callable[[dict], bool]
) -> None:
    """Send a tools/call with a progress token; read stdout until a message satisfies `until`."""
    assert proc.stdin and proc.stdout
    request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": name, "arguments": arguments, "_meta": {"progressToken": "p"}}}  # fmt: skip
    proc.stdin.write(json.dumps(request) + "\n")
    proc.stdin.flush()
    while not until(json.loads(proc.stdout.readline())):
        pass


LONG_COMMAND = "echo started; sleep 300"


# Prints RUNNING for each process in the devbox whose command line is exactly `sleep 300`.
LOOK_FOR_THE_SLEEP = (
    "for p in /proc/[0-9]*; do "
    "[ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = 'sleep 300 ' ] && echo RUNNING; done; true"
)


async def long_command_runs(data_dir: Path, log: Path, devbox: str) -> bool:
    """Whether `LONG_COMMAND`'s sleep still runs (a stopped server abandons its calls' commands)."""
    async with session(data_dir, log) as client:
        return "RUNNING" in text_of(
            await call_ok(client, "execute", {"devbox_id": devbox, "command": LOOK_FOR_THE_SLEEP})
        )


async def create_devbox(data_dir: Path, log: Path, name: str) -> str:
    async with session(data_dir, log) as client:
        return structured(await call_ok(client, "create_devbox", {"name": name}))["id"]


async def devbox_status(data_dir: Path, log: Path, devbox: str) -> str:
    async with session(data_dir, log) as client:
        return structured(await call_ok(client, "get_devbox", {"devbox_id": devbox}))["status"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_stdio_server_mid_call_and_its_devbox_keeps_running(
    sig: signal.Signals, data_dir: Path, tmp_path: Path
) -> None:
    devbox = anyio.run(create_devbox, data_dir, tmp_path / "setup.log", "signals")
    with (tmp_path / "stderr.log").open("w") as errlog:
        proc = subprocess.Popen(
            [EXE, "serve", "--data-dir", str(data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, env=server_env(), text=True,
        )  # fmt: skip
    try:
        initialize(proc)
        # A call in progress: the command has started and reported output as progress.
        call_and_wait_for(proc, "execute", {"devbox_id": devbox, "command": LONG_COMMAND},
                          lambda m: "started" in json.dumps(m.get("params", {})))  # fmt: skip
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"stopping on {sig.name}" in (tmp_path / "stderr.log").read_text()
    # The server owned no sandbox: the devbox, in the shared backend, runs on, and so does the command.
    assert anyio.run(devbox_status, data_dir, tmp_path / "after.log", devbox) == "running"
    assert anyio.run(long_command_runs, data_dir, tmp_path / "after.log", devbox)


async def test_sigterm_stops_an_http_server_mid_call_and_the_command_goes_on(
    data_dir: Path, tmp_path: Path
) -> None:
    from support.http_serving import http_client

    devbox = await create_devbox(data_dir, tmp_path / "setup.log", "http-signals")
    with serve_process(tmp_path, "--no-auth") as server:
        started = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if "started" in (message or ""):
                started.set()

        async def call_until_the_server_goes(client: Client) -> None:
            with contextlib.suppress(Exception):  # the server goes away mid-call
                await client.call_tool("execute", {"devbox_id": devbox, "command": LONG_COMMAND},
                                       progress_callback=on_progress)  # fmt: skip

        with contextlib.suppress(Exception):  # closing a session whose server is gone may fail too
            async with http_client(server.url, None) as client, anyio.create_task_group() as tg:
                tg.start_soon(call_until_the_server_goes, client)
                with anyio.fail_after(60):
                    await started.wait()
                server.process.send_signal(signal.SIGTERM)
                await anyio.to_thread.run_sync(server.process.wait, 30)
                tg.cancel_scope.cancel()
        assert server.process.returncode == 128 + signal.SIGTERM
        assert service.is_served(data_dir)  # the shared backend is not the HTTP server's to stop
        assert await long_command_runs(data_dir, tmp_path / "after.log", devbox)


async def list_devboxes(data_dir: Path, log: Path) -> None:
    async with session(data_dir, log) as client:
        await call_ok(client, "list_devboxes", {})


def test_serve_uses_a_foreground_local_api_on_its_data_dir_and_a_second_one_is_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    with (tmp_path / "local-api.log").open("w") as err:
        foreground = subprocess.Popen(
            [EXE, "local-api", "--port", "0", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=server_env(),
        )  # fmt: skip
    try:
        wait_until(lambda: (s := service.read_state(data_dir)) is not None and s.pid == foreground.pid,
                   "the foreground backend registered")  # fmt: skip
        state = service.read_state(data_dir)
        assert state is not None and state.idle_shutdown_seconds is None  # in the foreground: until stopped
        anyio.run(list_devboxes, data_dir, tmp_path / "stderr.log")
        assert backend_lines(tmp_path / "stderr.log") == [("using", state.base_url, foreground.pid)]

        second = subprocess.run(
            [EXE, "local-api", "--port", "0", "--data-dir", str(data_dir)],
            capture_output=True, text=True, env=server_env(), timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"another backend already serves {data_dir} (pid {foreground.pid}" in second.stderr
        assert "local-api --stop" in second.stderr and "Traceback" not in second.stderr

        status = subprocess.run([EXE, "local-api", "--status", "--data-dir", str(data_dir)],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert f"backend pid {foreground.pid} at {state.base_url}" in status.stderr
        assert state.api_key not in status.stderr
        stopped = subprocess.run([EXE, "local-api", "--stop", "--data-dir", str(data_dir)],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert stopped.returncode == 0
        assert foreground.wait(timeout=30) is not None
        assert not service.is_served(data_dir) and service.read_state(data_dir) is None
    finally:
        if foreground.poll() is None:
            foreground.kill()
            foreground.wait()


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_idle_setting_is_one_clear_line(value: str, data_dir: Path) -> None:
    done = subprocess.run(
        [EXE, "serve", "--data-dir", str(data_dir)], input="", capture_output=True, text=True, timeout=60,
        env=server_env(DEVBOX_LOCAL_IDLE_SHUTDOWN_SECONDS=value),
    )  # fmt: skip
    assert done.returncode == 2 and not done.stdout
    assert f"DEVBOX_LOCAL_IDLE_SHUTDOWN_SECONDS={value!r} is not a number of seconds" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_backend_that_cannot_start_is_a_clear_tool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    data_dir = tmp_path / "file" / "data"
    async with session(data_dir, tmp_path / "stderr.log") as client:
        result = await client.call_tool("list_devboxes", {})
    assert result.is_error
    assert f"the embedded backend (data in {data_dir}) could not be started" in text_of(result)
    assert "Not a directory" in text_of(result) and "Traceback" not in text_of(result)
