"""A devbox is a machine of its own on a root backend: a writable system, sudo, root on request,
changes that persist until shutdown, and a host that never changes.

Through the official runloop-api-client against `devbox-mcp local-api` (its own process). Package
installs use the machine's configured Debian mirror, as apt does; pip and npm install local
packages (no registry is contacted).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from runloop_api_client import Runloop
from runloop_api_client.lib.polling import PollingConfig
from support.backend_process import BackendProcess, backend_process, disk_image
from support.devbox_system import machine_system

from mcp_server.local.sandbox import sandbox_unavailable_reason

pytestmark = [
    pytest.mark.skipif(sandbox_unavailable_reason() is not None, reason="bubblewrap not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="devboxes have a system of their own on a root backend"),
]


@pytest.fixture(scope="module")
def local_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendProcess, Runloop]]:
    data_dir = tmp_path_factory.mktemp("system")
    with backend_process(data_dir, data_dir.parent / "system-backend.log") as backend:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        yield backend, sdk
        sdk.close()


def run(sdk: Runloop, devbox_id: str, command: str) -> tuple[int, str, str]:
    result = sdk.devboxes.execute_and_await_completion(devbox_id, command=command)
    return result.exit_status or 0, result.stdout or "", result.stderr or ""


def test_default_user_has_passwordless_sudo(local_api: tuple[BackendProcess, Runloop]) -> None:
    _, sdk = local_api
    devbox = sdk.devboxes.create_and_await_running()
    try:
        code, out, err = run(sdk, devbox.id, "whoami; id -u; id -g; echo $HOME; pwd; sudo -n whoami; sudo -n id -u")
        assert code == 0, err
        assert out.split() == ["user", "1000", "1000", "/home/user", "/home/user", "root", "0"]
    finally:
        sdk.devboxes.shutdown(devbox.id)


def test_sudo_apt_get_install_then_use_it_in_the_next_execution(local_api: tuple[BackendProcess, Runloop]) -> None:
    _, sdk = local_api
    devbox = sdk.devboxes.create_and_await_running()
    try:
        assert run(sdk, devbox.id, "command -v jq")[0] != 0  # not in the image: the install is what adds it
        code, out, err = run(sdk, devbox.id, "sudo apt-get update -qq && sudo apt-get install -y -qq jq")
        assert code == 0, out + err
        code, out, err = run(sdk, devbox.id, "jq --version && echo '{\"a\": 2}' | jq .a")
        assert code == 0 and out.split()[1:] == ["2"] and out.startswith("jq-"), out + err
    finally:
        sdk.devboxes.shutdown(devbox.id)


def test_sudo_pip_and_npm_install_into_the_system(local_api: tuple[BackendProcess, Runloop]) -> None:
    _, sdk = local_api
    devbox = sdk.devboxes.create_and_await_running()
    try:
        script = r"""
set -e
mkdir -p pypkg/devbox_probe npmpkg
echo 'VALUE = 42' > pypkg/devbox_probe/__init__.py
printf '[project]\nname = "devbox-probe"\nversion = "1.0"\n' > pypkg/pyproject.toml
sudo pip install -q --no-index --no-build-isolation ./pypkg
printf '{"name": "devbox-probe", "version": "1.0.0", "bin": {"devbox-probe": "cli.js"}}' > npmpkg/package.json
printf '#!/usr/bin/env node\nconsole.log("probe " + process.version)\n' > npmpkg/cli.js
(cd npmpkg && npm pack --silent >/dev/null)
sudo npm install -g --offline --no-audit --no-fund ./npmpkg/devbox-probe-1.0.0.tgz >/dev/null
"""
        code, out, err = run(sdk, devbox.id, script)
        assert code == 0, out + err
        code, out, err = run(
            sdk, devbox.id, "cd /; python3 -c 'import devbox_probe; print(devbox_probe.__file__, devbox_probe.VALUE)'; devbox-probe"
        )
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("/usr/local/lib/python3") and lines[0].endswith(" 42"), out
        assert lines[1].startswith("probe v"), out
    finally:
        sdk.devboxes.shutdown(devbox.id)


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"username": "root", "uid": 0}, ["root", "0", "0", "/root", "/root", "root"]),
        ({"username": "alice", "uid": 1001}, ["alice", "1001", "1001", "/home/alice", "/home/alice", "root"]),
    ],
)
def test_user_parameters_choose_who_every_execution_runs_as(
    local_api: tuple[BackendProcess, Runloop], user: dict[str, object], expected: list[str]
) -> None:
    _, sdk = local_api
    devbox = sdk.devboxes.create_and_await_running(launch_parameters={"user_parameters": user})
    try:
        assert devbox.launch_parameters.user_parameters is not None
        for _ in range(2):  # every execution, not only the first
            code, out, err = run(sdk, devbox.id, "whoami; id -u; id -g; echo $HOME; pwd; sudo -n whoami")
            assert code == 0 and out.split() == expected, out + err
        code, out, _ = run(sdk, devbox.id, "touch ~/mine && stat -c %U ~/mine ~")
        assert out.split() == [expected[0], expected[0]]
        sdk.devboxes.write_file_contents(devbox.id, file_path="written.txt", contents="hi")
        assert run(sdk, devbox.id, "stat -c %U written.txt")[1].strip() == expected[0]
    finally:
        sdk.devboxes.shutdown(devbox.id)


def test_changes_persist_until_shutdown(tmp_path: Path) -> None:
    """Across executions, suspend/resume and a backend restart; gone at shutdown, and from the disk."""
    marker = "sudo sh -c 'echo kept > /usr/local/bin/devbox-marker' && sudo useradd bob && echo 1 > ~/home-marker"
    check = "cat /usr/local/bin/devbox-marker; id -u bob; cat ~/home-marker"
    with backend_process(tmp_path, tmp_path / "backend.log") as backend:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        devbox = sdk.devboxes.create_and_await_running()
        assert run(sdk, devbox.id, marker)[0] == 0
        sdk.devboxes.suspend(devbox.id)
        sdk.devboxes.await_suspended(devbox.id)
        sdk.devboxes.resume(devbox.id)
        sdk.devboxes.await_running(devbox.id)
        assert run(sdk, devbox.id, check)[1].split() == ["kept", "1001", "1"]
        api_key = backend.api_key
    with backend_process(tmp_path, tmp_path / "backend.log", api_key=api_key) as backend:  # a restart
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        assert sdk.devboxes.retrieve(devbox.id).status == "suspended"
        sdk.devboxes.resume(devbox.id)
        sdk.devboxes.await_running(devbox.id)
        assert run(sdk, devbox.id, check)[1].split() == ["kept", "1001", "1"]
        state = tmp_path / "devboxes" / devbox.id
        system = _writable_root(state) / "system"  # on the devbox's own disk, mounted while it runs
        assert (system / "usr" / "local" / "bin" / "devbox-marker").exists()
        sdk.devboxes.shutdown(devbox.id)
        assert not system.exists() and not (_writable_root(state) / "home").exists()
        fresh = sdk.devboxes.create_and_await_running()
        code, out, _ = run(sdk, fresh.id, "cat /usr/local/bin/devbox-marker; id -u bob")
        assert code != 0 and out == ""
        sdk.devboxes.shutdown(fresh.id)


def _listing(roots: list[str]) -> dict[str, tuple[int, ...]]:
    """Every path under `roots` with its type, mode, owner, size and modification time."""
    found: dict[str, tuple[int, ...]] = {}
    for root in roots:
        for directory, subdirs, names in os.walk(root):
            for name in subdirs + names:
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                found[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
    return found


def test_nothing_on_the_host_changes(local_api: tuple[BackendProcess, Runloop]) -> None:
    """A devbox installs and removes packages and rewrites its system; the host's /usr, /etc, /var
    (and the image every devbox shares) stay exactly as they were."""
    _, sdk = local_api
    devbox = sdk.devboxes.create_and_await_running()
    system = machine_system()
    assert system is not None
    roots = ["/usr", "/etc", "/var"] + ([] if str(system[1].path).startswith("/var/") else [str(system[1].path)])
    before = _listing(roots)
    try:
        code, out, err = run(
            sdk,
            devbox.id,
            "set -e; sudo apt-get update -qq; sudo apt-get install -y -qq jq >/dev/null; sudo apt-get remove -y -qq --purge jq libjq1 >/dev/null; "
            "sudo apt-get install -y -qq --reinstall sudo >/dev/null; sudo rm -rf /usr/share/doc /var/lib/dpkg/info/less.list; "
            "sudo touch /usr/bin/evil /etc/evil /var/evil; sudo chmod 777 /etc /usr/bin; sudo useradd mallory",
        )
        assert code == 0, out + err
    finally:
        sdk.devboxes.shutdown(devbox.id)
    after = _listing(roots)
    changed = sorted(
        path
        for path in before.keys() | after.keys()
        if before.get(path) != after.get(path) and not _backend_bookkeeping(path, system[1].path.parent)
    )
    assert changed == [], changed[:20]


def _backend_bookkeeping(path: str, images: Path) -> bool:
    """The records of which backends use which image (image_gc.py): backends, this suite's or any
    other on the machine, write them whenever they start; no devbox can reach them."""
    relative = Path(path).relative_to(images) if Path(path).is_relative_to(images) else None
    if relative is None:
        return False
    return relative.name == ".users.lock" or (len(relative.parts) >= 2 and relative.parts[1] == "users")


NON_ROOT_BACKEND = """
import sys
sys.path[:0] = sys.argv[1:3]
from mcp_server.commands.cli import main
main(["local-api", "--port", sys.argv[3], "--data-dir", sys.argv[4]])
"""


def test_a_backend_without_root_falls_back_to_one_mapping_and_says_so() -> None:
    """An ordinary user cannot map a range: devboxes then run on the host's system, and the log says so."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    import httpx
    from support.backend_process import free_port

    uid, port = 4242, free_port()
    tmp_path = Path(tempfile.mkdtemp(prefix="nonroot-backend-", dir="/tmp"))  # pytest's are root's only
    os.chown(tmp_path, uid, uid)
    repo = Path(__file__).resolve().parents[2]
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    log_path = tmp_path / "backend.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/python3", "-c", NON_ROOT_BACKEND,
             str(repo), site, str(port), str(tmp_path / "data")],
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DEVBOX_LOCAL_API_KEY": "k"}, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        assert "the backend is not root, so devboxes map only its own uid" in log_path.read_text()
        sdk = Runloop(bearer_token="k", base_url=base, max_retries=0)
        devbox = sdk.devboxes.create_and_await_running()
        code, out, _ = run(sdk, devbox.id, "whoami; sudo -n true 2>/dev/null || echo no-sudo; touch /usr/x 2>&1")
        assert out.splitlines()[:2] == ["user", "no-sudo"] and "Read-only file system" in out
        with pytest.raises(Exception, match="user_parameters.*only as `user`"):
            sdk.devboxes.create(launch_parameters={"user_parameters": {"username": "root", "uid": 0}})
        sdk.devboxes.shutdown(devbox.id)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_devbox_made_on_the_hosts_system_resumes_on_its_own(tmp_path: Path) -> None:
    """A devbox recorded before devboxes had their own system (files owned by the backend's uid,
    no id range) resumes on the image, with its home kept and given to `user`."""
    import json
    import shutil

    with backend_process(tmp_path, tmp_path / "backend.log") as backend:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        devbox = sdk.devboxes.create_and_await_running()
        assert run(sdk, devbox.id, "mkdir -p work && echo kept > work/kept.txt")[0] == 0
        sdk.devboxes.suspend(devbox.id)
        sdk.devboxes.await_suspended(devbox.id)
        api_key = backend.api_key
    state = tmp_path / "devboxes" / devbox.id
    record = json.loads((state / "devbox.json").read_text())
    record.pop("id_range"), record.pop("image")
    (state / "devbox.json").write_text(json.dumps(record))
    with _disk_mounted(state) as root:
        shutil.rmtree(root / "system"), shutil.rmtree(root / "system-work")
        for path in [root / "home", *(root / "home").rglob("*")]:
            os.lchown(path, 0, 0)  # as the sandbox user of then (the backend's uid) left them
    with backend_process(tmp_path, tmp_path / "backend.log", api_key=api_key) as backend:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        sdk.devboxes.resume(devbox.id)
        sdk.devboxes.await_running(devbox.id)
        code, out, err = run(sdk, devbox.id, "cat work/kept.txt; stat -c %U work/kept.txt work; echo x >> work/kept.txt; sudo -n whoami")
        assert code == 0 and out.split() == ["kept", "user", "user", "root"], out + err
        ids, _image = machine_system()  # type: ignore[misc]
        assert (_writable_root(state) / "home" / "work" / "kept.txt").stat().st_uid == ids.host_uid(1000)
        sdk.devboxes.shutdown(devbox.id)


def _writable_root(state: Path) -> Path:
    """Where a devbox keeps home, tmp and its system's upper layer: its own disk when it has one."""
    import json

    return state / "disk" if json.loads((state / "devbox.json").read_text()).get("disk") else state


@contextlib.contextmanager
def _disk_mounted(state: Path) -> Iterator[Path]:
    """The writable root of a devbox whose backend is stopped (its disk mounted here for the test)."""
    root = _writable_root(state)
    if root == state:
        yield root
        return
    root.mkdir(exist_ok=True)
    with disk_image(state.parent.parent, state.name) as image:
        subprocess.run(["mount", "-o", "loop", str(image), str(root)], check=True)
        try:
            yield root
        finally:
            subprocess.run(["umount", "-d", str(root)], check=True)


def test_a_devbox_resumes_while_one_started_after_it_runs(local_api: tuple[BackendProcess, Runloop]) -> None:
    # Each devbox's launch begins with a copy of the host's mount table; a copy of an earlier
    # devbox's disk kept there would pin it, and that devbox could not get its disk back on resume.
    _, sdk = local_api
    first = sdk.devboxes.create_and_await_running(name="first")
    try:
        assert run(sdk, first.id, "echo kept > ~/note")[0] == 0
        second = sdk.devboxes.create_and_await_running(name="second")  # its launch sees first's disk mounted
        try:
            sdk.devboxes.suspend(first.id)
            assert sdk.devboxes.await_suspended(first.id).status == "suspended"
            sdk.devboxes.resume(first.id)
            assert sdk.devboxes.await_running(first.id, polling_config=PollingConfig(timeout_seconds=60)).status == "running"
            assert run(sdk, first.id, "cat ~/note") == (0, "kept\n", "")
        finally:
            sdk.devboxes.shutdown(second.id)
    finally:
        sdk.devboxes.shutdown(first.id)


def test_a_devbox_resumes_while_a_foreign_mount_namespace_holds_its_disk(
    local_api: tuple[BackendProcess, Runloop],
) -> None:
    # Any process on the host may make a mount namespace (`unshare -m`, `ip netns exec`) while a devbox's
    # disk is mounted; with private mounts its copy outlives the devbox's own mount. The resume mounts
    # the same device again (one filesystem instance) instead of waiting for a namespace it does not own.
    _, sdk = local_api
    devbox = sdk.devboxes.create_and_await_running(name="pinned")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
    try:
        assert run(sdk, devbox.id, "echo kept > ~/note")[0] == 0
        sdk.devboxes.suspend(devbox.id)
        assert sdk.devboxes.await_suspended(devbox.id).status == "suspended"
        sdk.devboxes.resume(devbox.id)
        assert sdk.devboxes.await_running(devbox.id, polling_config=PollingConfig(timeout_seconds=60)).status == "running"
        assert run(sdk, devbox.id, "cat ~/note; echo more >> ~/note") == (0, "kept\n", "")
    finally:
        holder.kill()
        holder.wait()
        sdk.devboxes.shutdown(devbox.id)
