"""Isolation seen through the public API: executions in two devboxes, as an agent would run them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.backend_process import devbox_home

from mcp_server.local.server import RunningBackend


@pytest.fixture(scope="module")
def pair(sdk):  # noqa: ANN001, ANN201
    a = sdk.devboxes.create_and_await_running(name="iso-a")
    b = sdk.devboxes.create_and_await_running(name="iso-b")
    yield a, b
    sdk.devboxes.shutdown(a.id)
    sdk.devboxes.shutdown(b.id)


def run(sdk, devbox_id: str, command: str):  # noqa: ANN001, ANN201
    return sdk.devboxes.execute_and_await_completion(devbox_id, command=command)


def test_background_server_is_reachable_by_later_executions_only_in_its_devbox(sdk, pair) -> None:  # noqa: ANN001
    a, b = pair
    started = run(
        sdk, a.id, "cd /tmp; nohup python3 -m http.server 8642 --bind 127.0.0.1 >/dev/null 2>&1 & echo $!"
    )
    assert started.exit_status == 0 and started.stdout.strip().isdigit()
    fetch = "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8642/', timeout=2).status)\""
    deadline = time.monotonic() + 20
    while (result := run(sdk, a.id, fetch)).stdout.strip() != "200":
        assert time.monotonic() < deadline, f"the server never answered: {result.stderr}"
        time.sleep(0.05)
    assert run(sdk, b.id, fetch).exit_status != 0


def test_devboxes_do_not_share_files_or_processes(sdk, pair) -> None:  # noqa: ANN001
    a, b = pair
    assert (
        run(
            sdk, a.id, "echo a-only > ~/private.txt && (exec -a iso-marker sleep 600) >/dev/null 2>&1 &"
        ).exit_status
        == 0
    )
    assert run(sdk, b.id, "cat ~/private.txt").exit_status != 0
    assert "iso-marker" in run(sdk, a.id, "ps -eo args").stdout
    assert "iso-marker" not in run(sdk, b.id, "ps -eo args").stdout


def test_escapes_fail_inside_executions(sdk, pair, backend: RunningBackend) -> None:  # noqa: ANN001
    a, _ = pair
    result = run(
        sdk,
        a.id,
        f"id -u; cat /etc/shadow; ls /root; ls {backend.config.data_dir}; grep CapEff /proc/self/status",
    )
    assert result.stdout.splitlines()[0] == "1000"
    assert "CapEff:\t0000000000000000" in result.stdout
    assert "Permission denied" in result.stderr
    assert "/root" in result.stderr and str(backend.config.data_dir) in result.stderr
    if os.geteuid() != 0:  # on the host's system; a system of its own may nest user namespaces
        assert "unshare failed" in run(sdk, a.id, "unshare -U true").stderr



# keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): answers a keyring id unless filtered.
KEYCTL_PROBE = (
    "python3 -c \"import ctypes, os, platform; libc = ctypes.CDLL(None, use_errno=True); "
    "nr = {'x86_64': 250, 'aarch64': 219}[platform.machine()]; "
    "print('keyctl', libc.syscall(nr, 0, -3, 0), os.strerror(ctypes.get_errno()))\""
)


def _status_fields(output: str, path: str) -> dict[str, str]:
    """`grep` lines `path:Name:\tvalue` as {Name: value}."""
    found = {}
    for line in output.splitlines():
        if line.startswith(path + ":"):
            name, value = line[len(path) + 1 :].split(":", 1)
            found[name] = value.strip()
    return found


def test_executions_have_the_first_processs_no_new_privs_and_seccomp_filter(sdk, pair) -> None:  # noqa: ANN001
    """nsenter'd commands used to run with neither; now the filter always, as bubblewrap's own child
    (pid 1 here), and no_new_privs on the host's system. On a system of its own (root backend)
    no_new_privs stays off, for sudo: setuid raises a process only to the devbox's root there."""
    a, _ = pair
    result = run(sdk, a.id, f"grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status /proc/1/status; {KEYCTL_PROBE}")
    own, first = _status_fields(result.stdout, "/proc/self/status"), _status_fields(result.stdout, "/proc/1/status")
    assert first == {"NoNewPrivs": "1", "Seccomp": "2"}, result.stdout
    assert own == {"NoNewPrivs": "0" if os.geteuid() == 0 else "1", "Seccomp": "2"}, result.stdout
    # The filter is the one meant: the host's keyrings are out of reach.
    assert "keyctl -1 Operation not permitted" in result.stdout, result.stdout + result.stderr
    if os.geteuid() == 0:  # also for root inside
        result = run(sdk, a.id, f"sudo -n grep Seccomp: /proc/self/status; sudo -n {KEYCTL_PROBE}")
        assert "Seccomp:\t2" in result.stdout and "keyctl -1 Operation not permitted" in result.stdout, result


@pytest.mark.skipif(os.geteuid() == 0, reason="on a system of its own setuid files are the devbox's (next test)")
def test_a_devbox_cannot_make_a_setuid_file(sdk, pair) -> None:  # noqa: ANN001
    """Its user is the backend's uid on the host: a setuid file would be a host setuid program of that uid."""
    a, _ = pair
    result = run(
        sdk,
        a.id,
        "cp /usr/bin/id ~/myid; chmod 4755 ~/myid; chmod u+s ~/myid; stat -c %a ~/myid; "
        "mkdir -p ~/shared && chmod g+s ~/shared && stat -c %a ~/shared",
    )
    assert result.stdout.split() == ["755", "2755"], result.stdout + result.stderr
    assert result.stderr.count("Operation not permitted") == 2, result.stderr


def _euid_of(path: Path) -> str:
    """Run `path -u` (a copy of id) as nobody: the effective uid it gets."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"/proc/self/fd/{fd}", "-u"],
            pass_fds=(fd,), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root (mounts) and setpriv")
def test_a_setuid_file_in_devbox_storage_gives_no_privileges_on_the_host(pair, backend: RunningBackend) -> None:  # noqa: ANN001
    """Should one get there (made by an older backend, say), devbox storage is mounted nosuid on the host."""
    a, _ = pair
    storage = backend.config.data_dir / "devboxes"
    assert os.statvfs(storage).f_flag & os.ST_NOSUID
    planted = devbox_home(backend.config.data_dir, a.id) / "setuid-id"  # on the devbox's own disk, if any
    control = backend.config.data_dir / "setuid-id-control"  # same filesystem, outside devbox storage
    for path in (planted, control):
        shutil.copy("/usr/bin/id", path)
        os.chmod(path, 0o4755)  # owned by root: the test runs as root
    try:
        assert _euid_of(control) == "0"  # setuid works on this filesystem ...
        assert _euid_of(planted) == "65534"  # ... but not in devbox storage
    finally:
        planted.unlink()
        control.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="a detached mount needs root")
def test_output_files_name_no_host_path_inside_the_devbox(sdk, backend: RunningBackend) -> None:  # noqa: ANN001
    """/proc/self/fd/1 and 2 of executions and launch commands show paths from the storage root only."""
    box = sdk.devboxes.create_and_await_running(
        launch_parameters={"launch_commands": ["readlink /proc/self/fd/2 > ~/launch-fd"]}
    )
    try:
        result = run(sdk, box.id, "readlink /proc/self/fd/1 /proc/self/fd/2; cat ~/launch-fd")
        paths = result.stdout.split()
        out = f"/{box.id}/executions/{result.execution_id}/std"
        assert paths == [out + "out", out + "err", f"/{box.id}/setup/0.log"], paths
        host_parts = {part for part in backend.config.data_dir.resolve().parts if part != "/"}
        assert not host_parts & {part for path in paths for part in Path(path).parts}, paths
    finally:
        sdk.devboxes.shutdown(box.id)


@pytest.mark.skipif(os.geteuid() != 0, reason="a devbox has a system (and a root) of its own on a root backend")
def test_devbox_root_is_not_host_root(sdk, pair, backend: RunningBackend) -> None:  # noqa: ANN001
    """sudo makes a command root of its devbox: of its own files, not of the host's."""
    a, _ = pair
    host_shadow = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()
    result = run(
        sdk,
        a.id,
        f"sudo sh -c 'cat /proc/self/uid_map; sha256sum /etc/shadow; ls {backend.config.data_dir}; "
        "echo 1 > /proc/sys/vm/drop_caches; umount /proc/sys && echo 1 > /proc/sys/vm/drop_caches'",
    )
    inside, host_base, count = result.stdout.split()[:3]
    assert (inside, count) == ("0", "65536") and int(host_base) > 65535, result.stdout
    assert host_shadow not in result.stdout  # the devbox's own /etc/shadow, not the host's
    assert str(backend.config.data_dir) in result.stderr and "No such file" in result.stderr
    # Kernel knobs stay out of reach even after root inside removes the read-only mount over them.
    assert result.stderr.count("drop_caches") == 2 and "Permission denied" in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="a system of its own needs a root backend")
def test_a_setuid_file_made_in_a_devbox_is_an_unprivileged_uids(sdk, pair, backend: RunningBackend) -> None:  # noqa: ANN001
    """dpkg and root inside make setuid files in a system of its own; on the host such a file belongs
    to an id of the unprivileged range, and devbox storage is nosuid besides."""
    a, _ = pair
    result = run(sdk, a.id, "cp /usr/bin/id ~/myid && chmod 4755 ~/myid && stat -c %a ~/myid && ~/myid -u")
    assert result.stdout.split() == ["4755", "1000"], result.stdout + result.stderr
    planted = devbox_home(backend.config.data_dir, a.id) / "myid"  # on the devbox's own disk, if any
    owner = planted.stat().st_uid
    assert owner > 65535 and owner != os.geteuid(), owner  # user's id in the range, not the host's root
    assert _euid_of(planted) == "65534"
