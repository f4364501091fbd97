"""A backend run as an ordinary user: its /etc/subuid range through newuidmap, or the single mapping.

Each test makes a throwaway account (its name carries the test's pid), runs `devbox-mcp local-api`
as that account (setpriv) with a data directory of its own, and looks at /proc/self/uid_map inside a devbox
created with the official client. The account and its /etc/subuid and /etc/subgid lines are
removed at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runloop_api_client import Runloop
from support.backend_process import backend_process

from mcp_server.local.forkclient import HELPER_NAME

REPO = Path(__file__).resolve().parents[2]
SUB_FILES = ("/etc/subuid", "/etc/subgid")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv") or not shutil.which("newuidmap"),
    reason="needs root (to make an account), useradd, setpriv and newuidmap (package uidmap; .ci installs it)",
)


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path  # a directory of its own (pytest's are root's alone)


def _sub_lines(name: str) -> dict[str, list[str]]:
    return {path: [line for line in Path(path).read_text().splitlines() if line.split(":")[0] == name]
            for path in SUB_FILES if Path(path).exists()}  # fmt: skip


def _drop_sub_lines(name: str) -> None:
    for path in SUB_FILES:
        file = Path(path)
        if file.exists():
            kept = [line for line in file.read_text().splitlines(keepends=True) if line.split(":")[0] != name]
            file.write_text("".join(kept))


def _free_sub_range(count: int = 65536) -> int:
    """A start no /etc/subuid or /etc/subgid line uses, in useradd's usual area."""
    end = 100000
    for path in SUB_FILES:
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    end = max(end, int(parts[1]) + int(parts[2]))
    return end


@pytest.fixture
def account() -> Iterator[Account]:
    # usermod --add-subuids needs the files; a minimal container may have none (removed again if made here).
    made = [Path(path) for path in SUB_FILES if not Path(path).exists()]
    for path in made:
        path.touch(mode=0o644)
    name = f"dbxsub{os.getpid()}x{os.urandom(2).hex()}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
    try:
        entry = pwd.getpwnam(name)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield Account(name, entry.pw_uid, entry.pw_gid, home)
    finally:
        _end_processes_of(pwd.getpwnam(name).pw_uid)
        deleted = subprocess.run(["userdel", name], check=False, capture_output=True, text=True)
        _drop_sub_lines(name)  # userdel removes them too; be sure
        shutil.rmtree(home, ignore_errors=True)
        assert deleted.returncode == 0, deleted.stderr
        assert not any(_sub_lines(name).values())
        for path in made:
            if not path.read_text().strip():
                path.unlink()


def _end_processes_of(uid: int) -> None:
    """What the account still runs (a sandbox dying after its backend) goes before userdel, which
    refuses a user with processes; all of them were started by this test, under this new account."""
    for _ in range(100):
        pids = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                line = next(x for x in status.read_text().splitlines() if x.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if int(line.split()[1]) == uid:
                pids.append(int(status.parent.name))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _give_range(account: Account) -> int:
    """The account's subordinate range (useradd gave one where /etc/subuid exists; else add one)."""
    lines = _sub_lines(account.name)
    if all(lines.get(path) for path in SUB_FILES):
        starts = {int(lines[path][0].split(":")[1]) for path in SUB_FILES}
        if len(starts) == 1:
            return starts.pop()
    _drop_sub_lines(account.name)
    start = _free_sub_range()
    subprocess.run(["usermod", "--add-subuids", f"{start}-{start + 65535}", "--add-subgids",
                    f"{start}-{start + 65535}", account.name], check=True)  # fmt: skip
    return start


def _run_backend_as(account: Account):  # noqa: ANN202
    site = [p for p in sys.path if p.endswith("site-packages") and p.startswith(str(REPO))]
    api_key = "test-key-" + os.urandom(8).hex()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(account.home), "PYTHONPATH": os.pathsep.join([str(REPO), *site]),
           "DEVBOX_LOCAL_API_KEY": api_key}  # fmt: skip
    return backend_process(
        account.home / "data", account.home / "backend.log", python="/usr/bin/python3", api_key=api_key,
        # setpriv and env exec: the pid killed at the end is the backend's own.
        prefix=["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
                "env", "-i", *(f"{k}={v}" for k, v in env.items())],
    )  # fmt: skip


def _inside(sdk: Runloop, devbox_id: str, command: str) -> str:
    result = sdk.devboxes.execute_and_await_completion(devbox_id, command=command)
    assert result.exit_status == 0, result
    return result.stdout or ""


def _started_by_the_fork_server(sdk: Runloop, devbox_id: str) -> bool:
    """Whether commands start through the devbox's fork server (forkserver.py), which an unprivileged
    backend's enters too, rather than with nsenter: their parent is inside the devbox, and is it."""
    return _inside(sdk, devbox_id, "tr '\\0' ' ' </proc/$PPID/cmdline").startswith(f"{HELPER_NAME} ")


def _maps(text: str) -> list[tuple[int, int, int]]:
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in text.splitlines() if line.strip())]


def test_a_backend_with_a_subordinate_range_maps_devbox_ids_to_it(account: Account) -> None:
    start = _give_range(account)
    with _run_backend_as(account) as backend:
        assert f"devbox ids 0-65535 map to its subordinate ids {start}-{start + 65534}" in backend.log
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        devbox = sdk.devboxes.create_and_await_running()
        assert _maps(_inside(sdk, devbox.id, "cat /proc/self/uid_map")) == [
            (0, start, 1000), (1000, account.uid, 1), (1001, start + 1000, 64535)
        ]  # fmt: skip
        assert _maps(_inside(sdk, devbox.id, "cat /proc/self/gid_map")) == [
            (0, start, 1000), (1000, account.gid, 1), (1001, start + 1000, 64535)
        ]  # fmt: skip
        assert _inside(sdk, devbox.id, "id -u; touch made; stat -c %u made").split() == ["1000", "1000"]
        home = backend.data_dir / "devboxes" / devbox.id / "home"
        assert (home / "made").stat().st_uid == account.uid  # `user` is the account itself on the host
        # slirp4netns still joins the namespace (its owner is the account): the devbox has its interface.
        assert "10.0.2.100/24" in _inside(sdk, devbox.id, "ip -o -4 addr show tap0")
        assert _started_by_the_fork_server(sdk, devbox.id)
        sdk.devboxes.shutdown(devbox.id)


def test_a_backend_without_a_subordinate_range_falls_back_and_says_why(account: Account) -> None:
    _drop_sub_lines(account.name)
    with _run_backend_as(account) as backend:
        assert "the backend is not root, so devboxes map only its own uid" in backend.log
        assert f"no range of 65535 ids for {account.name} in /etc/subuid" in backend.log
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        devbox = sdk.devboxes.create_and_await_running()
        assert _maps(_inside(sdk, devbox.id, "cat /proc/self/uid_map")) == [(1000, account.uid, 1)]
        assert _started_by_the_fork_server(sdk, devbox.id)
        sdk.devboxes.shutdown(devbox.id)
