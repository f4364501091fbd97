"""Commands start through their devbox's fork server (forkserver.py), and through nsenter once it is gone.

Each check runs in a devbox whose fork server serves it and in one whose fork server was killed
(the fallback), so both ways of starting a command keep the same properties: the sandbox's seccomp
filter, the devbox's user and cgroups, process groups that kill as a whole.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.devbox_system import own_system
from test_executions import read_until, sse_chunks
from test_isolation_api import KEYCTL_PROBE

from mcp_server.local import forkclient
from mcp_server.local.forkclient import HELPER_NAME, STATUS_LOST
from mcp_server.local.sandbox import Sandbox, SandboxSpec, sandbox_unavailable_reason

pytestmark = pytest.mark.skipif(sandbox_unavailable_reason() is not None, reason="bubblewrap not installed")

# The command's parent as the devbox sees it: the fork server, or nothing (pid 0: nsenter is outside).
PARENT = "echo ppid=$PPID; tr '\\0' ' ' </proc/$PPID/cmdline 2>/dev/null; echo"
# Kills the fork server that started it, and ends once it is gone: its own exit status is lost.
KILL_FORK_SERVER = "sudo -n kill -KILL $PPID; while sudo -n kill -0 $PPID 2>/dev/null; do :; done"


def run(sdk, devbox: str, command: str) -> Any:  # noqa: ANN001
    return sdk.devboxes.execute_and_await_completion(devbox, command=command)


def poll_until(check, seconds: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"


def bare_spec(tmp_path: Path, name: str) -> SandboxSpec:
    """A sandbox as a root backend's devboxes have it (a system of its own), without a network."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    system = own_system(tmp_path, home, tmp)
    return SandboxSpec(home=home, tmp=tmp, hostname=f"fork-{name}-{os.getpid()}", network="none", **system)


@pytest.fixture(scope="module")
def served(sdk) -> Iterator[str]:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(name="fork-served")
    yield view.id
    sdk.devboxes.shutdown(view.id)


@pytest.fixture(scope="module")
def fallen_back(sdk) -> Iterator[str]:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(name="fork-fallback")
    killed = run(sdk, view.id, KILL_FORK_SERVER)
    assert (killed.status, killed.exit_status) == ("completed", STATUS_LOST), killed
    yield view.id
    sdk.devboxes.shutdown(view.id)


@pytest.fixture(params=["served", "fallen_back"])
def devbox(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(request.param)


def test_a_command_is_started_by_the_fork_server_in_the_devbox(sdk, served) -> None:  # noqa: ANN001
    out = run(sdk, served, PARENT).stdout
    lines = out.splitlines()
    assert lines[0] != "ppid=0", out  # its parent is inside the devbox
    assert lines[1].startswith(f"{HELPER_NAME} -I -S - "), out  # and is the fork server
    assert "/" not in lines[1], out  # whose command line names no host path


def test_once_the_fork_server_is_gone_commands_enter_with_nsenter(sdk, fallen_back) -> None:  # noqa: ANN001
    assert run(sdk, fallen_back, PARENT).stdout.splitlines()[0] == "ppid=0"


def test_a_command_keeps_the_sandboxs_hardening(sdk, devbox) -> None:  # noqa: ANN001
    result = run(sdk, devbox, f"grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; {KEYCTL_PROBE}; sudo -n {KEYCTL_PROBE}")
    assert "Seccomp:\t2" in result.stdout, result.stdout
    assert f"NoNewPrivs:\t{0 if os.geteuid() == 0 else 1}" in result.stdout, result.stdout
    # The filter is the sandbox's: the host's keyrings are out of reach, for the user and for root.
    assert result.stdout.count("keyctl -1 Operation not permitted") == 2, result.stdout + result.stderr


def test_a_command_runs_as_the_devbox_user_in_its_cgroups_and_limits(sdk, devbox) -> None:  # noqa: ANN001
    result = run(sdk, devbox, "id -u; id -G; sudo -n id -u; pwd; cmp /proc/self/cgroup /proc/1/cgroup && echo same-cgroups")
    assert result.stdout.split() == ["1000", "1000", "0", "/home/user", "same-cgroups"], result.stdout + result.stderr
    # The process limit the devbox's size sets (what `ulimit -u` reports in it) is in force.
    assert run(sdk, devbox, "ulimit -u").stdout.strip() != "unlimited"


def test_kill_process_group_kills_everything_the_command_started(sdk, devbox, http: httpx.Client) -> None:  # noqa: ANN001
    ex = sdk.devboxes.execute_async(devbox, command="sleep 1000 & first=$!; sleep 1000 & echo $first $!; wait")
    path = f"/v1/devboxes/{devbox}/executions/{ex.execution_id}/stream_stdout_updates"
    children = read_until(sse_chunks(http, path), lambda text: text.endswith("\n")).split()
    alive = " && ".join(f"test -d /proc/{pid} && ! grep -q '^State:.*Z' /proc/{pid}/status" for pid in children)
    assert run(sdk, devbox, alive).exit_status == 0
    killed = sdk.devboxes.executions.kill(ex.execution_id, devbox_id=devbox, kill_process_group=True)
    assert (killed.status, killed.exit_status in (137, 143)) == ("completed", True), killed
    gone = " && ".join(f"! {{ test -d /proc/{pid} && ! grep -q '^State:.*Z' /proc/{pid}/status; }}" for pid in children)
    poll_until(lambda: run(sdk, devbox, gone).exit_status == 0)


def test_stdin_reaches_the_command(sdk, devbox) -> None:  # noqa: ANN001
    ex = sdk.devboxes.execute_async(devbox, command="read -r line; echo got:$line", attach_stdin=True)
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text="hello\n")
    done = sdk.devboxes.executions.await_completed(ex.execution_id, devbox_id=devbox)
    assert (done.exit_status, done.stdout) == (0, "got:hello\n")


def test_the_fork_server_dying_is_logged_once(sdk, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    caplog.set_level(logging.WARNING, logger="devbox_mcp.local")
    view = sdk.devboxes.create_and_await_running(name="fork-log")
    try:
        assert run(sdk, view.id, KILL_FORK_SERVER).exit_status == STATUS_LOST
        for _ in range(3):
            assert run(sdk, view.id, "echo $PPID").stdout == "0\n"
    finally:
        sdk.devboxes.shutdown(view.id)
    gone = [r for r in caplog.records if "spawn helper" in r.getMessage()]
    assert len(gone) == 1, [r.getMessage() for r in gone]
    assert "commands enter it with nsenter" in gone[0].getMessage()


def test_a_resumed_devbox_has_a_fork_server_again(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(name="fork-resume")
    try:
        assert run(sdk, view.id, KILL_FORK_SERVER).exit_status == STATUS_LOST
        sdk.devboxes.suspend(view.id)
        sdk.devboxes.await_suspended(view.id)
        sdk.devboxes.resume(view.id)
        sdk.devboxes.await_running(view.id)
        parent = run(sdk, view.id, PARENT).stdout.splitlines()
        assert parent[0] != "ppid=0" and parent[1].startswith(HELPER_NAME), parent
    finally:
        sdk.devboxes.shutdown(view.id)


def test_a_fork_server_that_cannot_start_leaves_commands_to_nsenter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(forkclient, "_source", lambda: b"raise SystemExit(3)\n")  # the fault: it exits at once
    caplog.set_level(logging.WARNING, logger="devbox_mcp.local")
    spec = bare_spec(tmp_path, "fail")

    async def go() -> str:
        sandbox = Sandbox(spec)
        await sandbox.start()
        try:
            assert await sandbox.fork_server() is None
            proc = await sandbox.spawn(
                "echo $PPID; id -u; grep Seccomp: /proc/self/status",
                env={}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, out
            return out.decode()
        finally:
            await sandbox.stop()

    assert asyncio.run(go()).split() == ["0", "1000", "Seccomp:", "2"]
    failed = [r.getMessage() for r in caplog.records if "spawn helper" in r.getMessage()]
    assert len(failed) == 1 and "commands enter it with nsenter" in failed[0], failed


def _parent(pid: int) -> int:
    """A host process's parent pid (field 4 of /proc/PID/stat, after the command in parentheses)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def test_the_fork_server_is_never_left_to_the_hosts_init(tmp_path: Path) -> None:
    """Its parent is the process that started it, a child of the backend, until it ends: an orphan
    would go to the host's init, and a stopping devbox's pid namespace cannot finish dying until
    that init reaps it (seconds on an init that reaps late)."""
    spec = bare_spec(tmp_path, "parent")

    async def go() -> tuple[int, int]:
        sandbox = Sandbox(spec)
        await sandbox.start()
        try:
            server = await sandbox.fork_server()
            assert server is not None and server.pid is not None
            launcher = _parent(server.pid)
            return launcher, _parent(launcher)
        finally:
            await sandbox.stop()

    launcher, its_parent = asyncio.run(go())
    assert launcher != 1 and its_parent == os.getpid(), (launcher, its_parent)
    assert not Path(f"/proc/{launcher}").exists()  # both gone (and reaped) once the sandbox stopped


def test_a_stopping_sandbox_does_not_report_its_fork_server_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop that finds the fork server still starting closes it only once it is up; its end can
    come first, and is then no news. The fault makes that race certain: close is a no-op."""
    monkeypatch.setattr(forkclient.ForkServer, "close", lambda self: None)
    caplog.set_level(logging.WARNING, logger="devbox_mcp.local")
    spec = bare_spec(tmp_path, "stop")

    async def go() -> None:
        sandbox = Sandbox(spec)
        await sandbox.start()
        server = await sandbox.fork_server()
        assert server is not None
        ended = asyncio.Event()
        lost = server._lost
        server._lost = lambda why: (lost(why), ended.set())  # type: ignore[method-assign]
        await sandbox.stop()
        await asyncio.wait_for(ended.wait(), 30)  # its end, read from its socket

    asyncio.run(go())
    assert [r.getMessage() for r in caplog.records if "spawn helper" in r.getMessage()] == []
