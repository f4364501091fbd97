"""What a command inside a devbox sandbox can and cannot reach (real bubblewrap sandboxes).

As root (CI), the sandboxes have a system of their own, as a root backend's devboxes do: the
devbox image under a writable layer, ids mapped to an unprivileged host range, sudo inside.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.devbox_system import machine_system, own_system

from mcp_server.local.sandbox import Sandbox, SandboxSpec, sandbox_unavailable_reason, tools

pytestmark = pytest.mark.skipif(sandbox_unavailable_reason() is not None, reason="bubblewrap not installed")


class Box:
    """A started sandbox plus a way to run commands in it from synchronous tests."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, root: Path, name: str, network: str = "isolated"
    ) -> None:
        self.loop = loop
        self.root = root / name
        (self.root / "home").mkdir(parents=True)
        (self.root / "tmp").mkdir()
        system = own_system(self.root, self.root / "home", self.root / "tmp")
        self.own_system = bool(system)
        self.sandbox = Sandbox(
            SandboxSpec(home=self.root / "home", tmp=self.root / "tmp", hostname=name, network=network, **system)  # type: ignore[arg-type]
        )
        loop.run_until_complete(self.sandbox.start())

    def run(self, command: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        async def go() -> tuple[int, str]:
            proc = await self.sandbox.spawn(
                command,
                env=env or {},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            return proc.returncode or 0, out.decode()

        return self.loop.run_until_complete(go())

    def stop(self) -> None:
        self.loop.run_until_complete(self.sandbox.stop())


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def boxes(
    loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Box, Box]]:
    root = tmp_path_factory.mktemp("data")
    a, b = Box(loop, root, "alpha"), Box(loop, root, "beta")
    yield a, b
    a.stop()
    b.stop()


def poll_until(check, what: str, deadline: float = 10.0):  # noqa: ANN001, ANN201
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_user_is_uid_1000_without_capabilities(boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    code, out = a.run("id -u; id -g; whoami; pwd; echo $HOME; grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status")
    assert code == 0
    lines = out.split()
    assert lines[:5] == ["1000", "1000", "user", "/home/user", "/home/user"]
    assert out.count("0000000000000000") == 3, out


def test_privileges(boxes: tuple[Box, Box]) -> None:
    """Without a system of its own, nothing gains privileges. With one, sudo makes a command root of
    its devbox, and still no process of it is root on the host: every one is an id of the range."""
    a, _ = boxes
    if not a.own_system:
        code, out = a.run("unshare -U true 2>&1; echo rc=$?; su -c true root </dev/null 2>&1; echo su=$?")
        assert "rc=0" not in out and "su=0" not in out, out
        return
    ids, _image = machine_system()  # type: ignore[misc]
    code, out = a.run("sudo -n id -u; (exec -a marker-root-sleep sudo -n sleep 300) >/dev/null 2>&1 & echo started")
    assert out.split() == ["0", "started"], out
    init = a.sandbox.init_pid
    assert init is not None
    bwrap = int(Path(f"/proc/{init}/stat").read_text().split()[3])  # pid 1 inside, the init's parent

    def ids_of(pid: int) -> list[int]:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return [int(i) for i in fields["Uid"].split() + fields["Gid"].split()]

    def devbox_processes() -> dict[int, list[int]]:
        """Every host process in the sandbox's pid namespace, with its real/effective/saved/fs uids and gids."""
        namespace = os.stat(f"/proc/{init}/ns/pid").st_ino
        found = {}
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                if os.stat(f"/proc/{pid}/ns/pid").st_ino == namespace:
                    found[pid] = ids_of(pid)
            except (OSError, KeyError):
                continue
        return found

    def with_root_process() -> dict[int, list[int]] | None:
        found = devbox_processes()
        return found if any(ids_found[1] == ids.host_uid(0) for ids_found in found.values()) else None

    # The sudo'd sleep runs as the devbox's root: on the host, the range's first id.
    processes = poll_until(with_root_process, "the devbox's root process")
    processes[bwrap] = ids_of(bwrap)
    for pid, found in processes.items():
        assert all(ids.holds_uid(i) or ids.gid_base <= i < ids.gid_base + ids.count for i in found), (pid, found)
    # A user namespace made inside (as browsers' sandboxes do) is still the range on the host.
    code, out = a.run("unshare -U -r cat /proc/self/uid_map")
    assert code == 0 and out.split()[:3] == ["0", "1000", "1"], out
    a.run("sudo -n pkill -f marker-root-sleep; sudo -n pkill -x sleep")


def test_host_secrets_are_unreadable(boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    for path in ("/etc/shadow", "/etc/gshadow"):
        code, out = a.run(f"cat {path}")
        assert code != 0 and "Permission denied" in out, (path, out)
        assert not a.run(f"test -s {path} && test -r {path}")[0] == 0
    code, out = a.run("ls -A /etc/ssl/private 2>&1; cat /etc/passwd")
    assert "root:x:0:0" in out and "user:x:1000:1000" in out
    assert os.path.exists("/etc/shadow")  # the mask is about the sandbox, not the host
    if a.own_system:  # even its root reads only the devbox's own files
        code, out = a.run("sudo -n cat /etc/shadow")
        assert code == 0 and out != Path("/etc/shadow").read_text()
        assert "user:" in out


def test_host_directories_are_invisible(
    boxes: tuple[Box, Box], tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, _ = boxes
    data_dir = a.root.parent
    host_only = ["/work", str(data_dir), str(a.root), "/root/.pyenv"]
    if not a.own_system:
        host_only += ["/root", "/opt", "/var/lib"]
    sudo = "sudo -n " if a.own_system else ""
    for path in host_only:
        code, _ = a.run(f"{sudo}test -e {path}")
        assert code != 0, f"{path} is visible inside the sandbox"
    allowed = {"bin", "dev", "etc", "home", "lib", "lib64", "proc", "run", "sbin", "tmp", "usr", "var"}
    if a.own_system:
        allowed |= set(os.listdir(machine_system()[1].rootfs))  # type: ignore[index]
    code, out = a.run("ls /")
    assert set(out.split()) <= allowed, out


def test_system_directories_are_read_only(boxes: tuple[Box, Box]) -> None:
    """For the devbox user; with a system of its own, root may write it, and only the devbox's layer changes."""
    a, _ = boxes
    refusal = "Permission denied" if a.own_system else "Read-only file system"
    for path in ("/usr/evil", "/etc/evil", "/evil"):
        code, out = a.run(f"touch {path}")
        assert code != 0 and refusal in out, (path, out)
    assert a.run("echo x > /proc/sys/kernel/hostname")[0] != 0
    # No kernel knob in /proc is writable (the sandbox user owns only its own processes' files).
    code, out = a.run(
        "find /proc -maxdepth 4 -type f -writable ! -path '/proc/[0-9]*' ! -path '/proc/self/*' "
        "! -path '/proc/thread-self/*' 2>/dev/null"
    )
    assert out.strip() == "", out
    if a.own_system:
        image = machine_system()[1].rootfs  # type: ignore[index]
        assert a.run("sudo -n touch /usr/evil && ls /usr/evil")[0] == 0
        assert not Path("/usr/evil").exists() and not (image / "usr" / "evil").exists()
        assert (a.root / "system" / "usr" / "evil").exists()  # the devbox's own layer


def test_devboxes_do_not_see_each_others_files_or_processes(boxes: tuple[Box, Box]) -> None:
    a, b = boxes
    assert a.run("echo secret-a > ~/mine.txt; echo tmp-a > /tmp/mine.txt")[0] == 0
    assert b.run("cat ~/mine.txt /tmp/mine.txt")[0] != 0
    assert (a.root / "home" / "mine.txt").read_text() == "secret-a\n"
    a.run("(exec -a marker-alpha-process sleep 300) >/dev/null 2>&1 &")
    poll_until(lambda: "marker-alpha-process" in a.run("ps -eo args")[1], "the marker process in alpha")
    code, out = b.run("ps -eo args")
    assert "marker-alpha-process" not in out and "sleep 300" not in out
    # Only the sandbox's own processes: the init, and this ps.
    assert len(b.run("ls -d /proc/[0-9]*")[1].split()) < 6


def test_hostname_and_machine_id_are_the_devbox_own(boxes: tuple[Box, Box]) -> None:
    a, b = boxes
    assert a.run("hostname")[1].strip() == "alpha"
    host_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    ids = {a.run("cat /etc/machine-id")[1].strip(), b.run("cat /etc/machine-id")[1].strip()}
    assert len(ids) == 2 and host_id not in ids


def test_background_server_persists_across_spawns(boxes: tuple[Box, Box]) -> None:
    a, b = boxes
    code, _ = a.run("cd /tmp; nohup python3 -m http.server 8765 --bind 127.0.0.1 >/tmp/http.log 2>&1 &")
    assert code == 0
    fetch = "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8765/', timeout=2).status)\""
    poll_until(lambda: a.run(fetch)[1].strip() == "200", "the background server to answer")
    # Not reachable from the other devbox, nor from the host: each has its own network namespace.
    assert b.run(fetch)[0] != 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 8765), timeout=1).close()


def test_host_loopback_is_unreachable_in_isolated_mode(boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        probe = f"python3 -c \"import socket; socket.create_connection(('{{}}', {port}), timeout=2)\""
        for host in ("127.0.0.1", "10.0.2.2"):
            code, out = a.run(probe.format(host))
            assert code != 0, f"host loopback reachable through {host}"
    finally:
        server.close()


@pytest.mark.skipif(tools()["slirp4netns"] is None, reason="slirp4netns not installed")
def test_isolated_mode_has_outbound_interface_from_the_first_command(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    box = Box(loop, tmp_path, "first-command")
    try:
        # The very first command already sees slirp4netns's interface: spawn waits for it.
        code, out = box.run("ip -o -4 addr show tap0")
        assert code == 0 and "10.0.2.100" in out
    finally:
        box.stop()
    assert (
        box.sandbox._slirp is not None and box.sandbox._slirp.returncode is not None
    )  # it exited with the sandbox


def test_network_modes(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    none = Box(loop, tmp_path, "none-net", network="none")
    host = Box(loop, tmp_path, "host-net", network="host")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    probe = f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\""
    try:
        assert none.run("ip -o link | grep -vc ': lo:'")[1].strip() == "0"  # loopback only
        assert (
            "tap0" in host.run("ip -o link")[1] or host.run("ip -o link | grep -vc ': lo:'")[1].strip() != "0"
        )
        assert none.run(probe)[0] != 0
        assert host.run(probe)[0] == 0  # host networking shares the host's loopback
    finally:
        server.close()
        none.stop()
        host.stop()


def test_non_interactive_environment(boxes: tuple[Box, Box]) -> None:
    a, _ = boxes
    code, out = a.run(
        "echo $DEBIAN_FRONTEND $GIT_TERMINAL_PROMPT $PAGER $CI $TERM $FOO; read x; echo read=$?",
        env={"FOO": "bar"},
    )
    assert out.split() == ["noninteractive", "0", "cat", "true", "dumb", "bar", "read=1"]
    # The caller's variables win over the defaults.
    assert a.run("echo $PAGER", env={"PAGER": "less"})[1].strip() == "less"
    assert a.run("echo $PIP_BREAK_SYSTEM_PACKAGES $PIP_NO_INPUT $GIT_EDITOR")[1].split() == ["1", "1", "true"]


def test_kill_process_group_reaches_background_jobs(
    boxes: tuple[Box, Box], loop: asyncio.AbstractEventLoop
) -> None:
    a, _ = boxes

    async def start() -> asyncio.subprocess.Process:
        return await a.sandbox.spawn(
            "(exec -a marker-bg-job sleep 300) & echo started; wait",
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    proc = loop.run_until_complete(start())
    assert loop.run_until_complete(proc.stdout.readline()) == b"started\n"  # type: ignore[union-attr]
    poll_until(lambda: "marker-bg-job" in a.run("ps -eo args")[1], "the background job")
    os.killpg(proc.pid, 9)
    loop.run_until_complete(proc.wait())
    poll_until(lambda: "marker-bg-job" not in a.run("ps -eo args")[1], "the background job to die")


def test_stop_kills_everything_and_keeps_the_home(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    box = Box(loop, tmp_path, "stopper")
    box.run("echo kept > ~/kept.txt; (exec -a marker-stop sleep 300) >/dev/null 2>&1 &")
    pid = box.sandbox.init_pid
    assert pid is not None
    box.stop()
    assert not box.sandbox.alive
    assert not Path(f"/proc/{pid}").exists()
    assert "marker-stop" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert (tmp_path / "stopper" / "home" / "kept.txt").read_text() == "kept\n"
    with pytest.raises(Exception, match="not running"):
        box.run("true")


def test_sandbox_start_failure_is_clear(loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    from mcp_server.local.sandbox import SandboxError

    sandbox = Sandbox(SandboxSpec(home=tmp_path / "missing", tmp=tmp_path / "missing-too", hostname="x"))
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises((SandboxError, OSError)):
        loop.run_until_complete(sandbox.start())
    assert not sandbox.alive
    assert set(os.listdir("/proc/self/fd")) <= fds_before, "a failed start left descriptors open"


NON_ROOT_SCRIPT = r"""
import asyncio, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mcp_server.local import sandbox as module  # the standard library only: a system python3 runs it

async def main():
    base = Path(sys.argv[2])
    (base / "home").mkdir(parents=True)
    (base / "tmp").mkdir()
    box = module.Sandbox(module.SandboxSpec(home=base / "home", tmp=base / "tmp", hostname="nonroot", network="none"))
    await box.start()
    proc = await box.spawn(
        "id -u; grep CapEff /proc/self/status; echo made > ~/made.txt; cat /etc/shadow 2>&1; echo out > /dev/stdout",
        env={}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    print((await proc.communicate())[0].decode(), end="")
    await box.stop()

asyncio.run(main())
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not Path("/usr/bin/setpriv").exists(),
    reason="needs root (to switch to another uid), setpriv and a system python3",
)
def test_sandbox_works_for_a_backend_without_root() -> None:
    """On a laptop the backend runs as its user: bubblewrap is then unprivileged and nests differently."""
    import shutil
    import tempfile

    uid = 4242
    base = Path(tempfile.mkdtemp(prefix="nonroot-", dir="/tmp"))
    try:
        os.chown(base, uid, uid)
        script = base / "run.py"
        script.write_text(NON_ROOT_SCRIPT)
        root = Path(__file__).resolve().parents[2]
        result = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3", str(script), str(root), str(base / "box")],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(base)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "1000" and lines[1] == "CapEff:\t0000000000000000"
        assert "Permission denied" in lines[2] and lines[3] == "out"
        made = base / "box" / "home" / "made.txt"
        assert made.read_text() == "made\n" and made.stat().st_uid == uid
    finally:
        shutil.rmtree(base, ignore_errors=True)


CRASH_SCRIPT = r"""
import asyncio, os, signal, subprocess, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from mcp_server.local.sandbox import Sandbox, SandboxSpec
from support.devbox_system import own_system

async def main():
    base = Path(sys.argv[2])
    (base / "home").mkdir(parents=True)
    (base / "tmp").mkdir()
    system = own_system(base, base / "home", base / "tmp")
    box = Sandbox(SandboxSpec(home=base / "home", tmp=base / "tmp", hostname="crash", **system))
    await box.start()
    proc = await box.spawn("(exec -a crash-marker sleep 600) >/dev/null 2>&1 & echo $!", env={},
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    await proc.communicate()
    print(box.init_pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the backend dies without stopping anything

asyncio.run(main())
"""


def test_sandbox_dies_with_a_crashed_backend(tmp_path: Path) -> None:
    """A backend killed outright must not leave its sandboxes (and their processes) running."""
    import sys

    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(script), str(root), str(tmp_path / "box")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == -9, result.stderr
    init_pid = int(result.stdout.strip())

    def gone() -> bool:
        try:
            return Path(f"/proc/{init_pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, IndexError):
            return True

    poll_until(gone, "the orphaned sandbox to end")
    poll_until(
        lambda: (
            "crash-marker" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        ),
        "the sandbox's processes to end",
    )
