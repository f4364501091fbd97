"""Devbox sizes: resource_size_request validated as the API says, and enforced inside the devbox
(memory, processes, disk, RAM-backed mounts, what nproc and free report), with usage accounted.

Every probe of a limit uses the smallest size and stays bounded: a memory hog that stops at
2 GiB, a process spawner that stops 50 past the limit, a disk writer that stops 300 MB past it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from runloop_api_client import Runloop
from support.backend_process import backend_process
from support.devbox_system import machine_system

from mcp_server.local import cgroups
from mcp_server.local.limits import meminfo_text
from mcp_server.local.server import RunningBackend, start_in_thread
from mcp_server.local.sizes import GIB

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="limits need root here (cgroups, loop-mounted disks)")

X_SMALL = {"resource_size_request": "X_SMALL"}
TINY = {"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 0.5, "custom_gb_memory": 1, "custom_disk_size": 2}


def run(http: httpx.Client, devbox_id: str, command: str) -> dict[str, Any]:
    r = http.post(f"/v1/devboxes/{devbox_id}/execute_sync", json={"command": command}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def make(http: httpx.Client):
    """Create running devboxes with the given launch parameters; all shut down at the end."""
    made: list[str] = []

    def create(params: dict[str, Any]) -> dict[str, Any]:
        r = http.post("/v1/devboxes/create_and_await_running", json={"launch_parameters": params})
        assert r.status_code == 200, r.text
        view = r.json()
        made.append(view["id"])
        assert view["status"] == "running", view
        return view

    yield create
    for devbox_id in made:
        http.post(f"/v1/devboxes/{devbox_id}/shutdown")


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"resource_size_request": "HUGE"}, ["resource_size_request must be one of", "X_SMALL", "CUSTOM_SIZE"]),
        ({"resource_size_request": "SMALL", "custom_cpu_cores": 2}, ["custom_cpu_cores needs resource_size_request CUSTOM_SIZE"]),
        ({"custom_gb_memory": 4}, ["custom_gb_memory needs resource_size_request CUSTOM_SIZE"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_gb_memory": 2}, ["needs launch_parameters.custom_cpu_cores"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 1}, ["needs launch_parameters.custom_gb_memory"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 3, "custom_gb_memory": 8}, ["custom_cpu_cores=3 is not allowed", "0.5, 1, or a multiple of 2"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 0.25, "custom_gb_memory": 1}, ["custom_cpu_cores=0.25"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 18, "custom_gb_memory": 64}, ["custom_cpu_cores=18", "max 16"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 2, "custom_gb_memory": 5}, ["custom_gb_memory=5 is not allowed", "1 or a multiple of 2"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 16, "custom_gb_memory": 66}, ["custom_gb_memory=66", "max 64"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 1, "custom_gb_memory": 16}, ["16 GiB per CPU", "between 2 and 8", "2 to 8 GiB"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 4, "custom_gb_memory": 4}, ["1 GiB per CPU", "8 to 32 GiB"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 1, "custom_gb_memory": 2, "custom_disk_size": 3}, ["custom_disk_size=3 is not allowed", "multiple of 2 from 2 to 64"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 1, "custom_gb_memory": 2, "custom_disk_size": 0}, ["custom_disk_size=0"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 1, "custom_gb_memory": 2, "custom_disk_size": 66}, ["custom_disk_size=66"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": "two", "custom_gb_memory": 4}, ["custom_cpu_cores must be a number"]),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": True, "custom_gb_memory": 2}, ["custom_cpu_cores must be a number"]),
    ],
)  # fmt: skip
def test_a_size_that_breaks_a_rule_is_400_naming_the_rule(
    http: httpx.Client, params: dict[str, Any], fragments: list[str]
) -> None:
    before = {d["id"] for d in http.get("/v1/devboxes", params={"limit": 100}).json()["devboxes"]}
    r = http.post("/v1/devboxes", json={"launch_parameters": params})
    assert r.status_code == 400, r.text
    for fragment in fragments:
        assert fragment in r.json()["message"], r.json()["message"]
    after = {d["id"] for d in http.get("/v1/devboxes", params={"limit": 100}).json()["devboxes"]}
    assert after == before  # nothing was created


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ("SMALL", 1, 2, 4, 1024)),
        (X_SMALL, ("X_SMALL", 0.5, 1, 4, 512)),
        ({"resource_size_request": "MEDIUM"}, ("MEDIUM", 2, 4, 8, 2048)),
        ({"resource_size_request": "LARGE"}, ("LARGE", 2, 8, 16, 4096)),
        ({"resource_size_request": "X_LARGE"}, ("X_LARGE", 4, 16, 16, 8192)),
        ({"resource_size_request": "XX_LARGE"}, ("XX_LARGE", 8, 32, 16, 16384)),
        (TINY, ("CUSTOM_SIZE", 0.5, 1, 2, 512)),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 16, "custom_gb_memory": 64, "custom_disk_size": 64},
         ("CUSTOM_SIZE", 16, 64, 64, 32768)),
        ({"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 2, "custom_gb_memory": 4}, ("CUSTOM_SIZE", 2, 4, 8, 2048)),
    ],
)  # fmt: skip
def test_every_size_and_the_rules_edges_are_accepted(
    http: httpx.Client, params: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    r = http.post("/v1/devboxes", json={"launch_parameters": params})
    assert r.status_code == 200, r.text
    view = r.json()
    try:
        res = view["resources"]
        assert (res["size"], res["cpu_cores"], res["memory_gib"], res["disk_gib"], res["max_processes"]) == expected
        assert view["launch_parameters"].get("resource_size_request") == params.get("resource_size_request")
    finally:
        http.post(f"/v1/devboxes/{view['id']}/shutdown")


# -- enforcement inside ------------------------------------------------------------------------


@root_only
def test_nproc_getconf_and_python_count_the_devboxs_cpus(http: httpx.Client, make) -> None:  # noqa: ANN001
    view = make(X_SMALL)
    if "nproc" in view["resources"].get("not_enforced", {}):
        pytest.skip(view["resources"]["not_enforced"]["nproc"])
    out = run(http, view["id"], "nproc; getconf _NPROCESSORS_ONLN; getconf _NPROCESSORS_CONF; "
              "python3 -c 'import os; print(os.cpu_count(), *sorted(os.sched_getaffinity(0)))'; "
              "cat /sys/devices/system/cpu/online; touch /sys/x 2>/dev/null || echo read-only")  # fmt: skip
    nproc, online, conf, python, listed, sys_dir = out["stdout"].splitlines()
    count, cpu = python.split()
    assert nproc == online == conf == count == "1"  # 0.5 CPU runs on one, whatever the host has
    assert listed == cpu and sys_dir == "read-only"


def _cgroup_file(devbox_cgroups: dict[str, str], controller: str, name: str) -> str:
    for version, mountpoint, options in cgroups.parse_mounts(Path("/proc/self/mounts").read_text()):
        if version == 1 and controller in options:
            return (Path(mountpoint) / devbox_cgroups[controller].lstrip("/") / name).read_text().strip()
    pytest.skip(f"no cgroup v1 {controller} hierarchy on this host")


@root_only
def test_the_devbox_is_its_size_inside_and_on_the_host(http: httpx.Client, make) -> None:  # noqa: ANN001
    view = make(X_SMALL)
    assert "not_enforced" not in view["resources"], view["resources"]
    out = run(http, view["id"], "nproc; ulimit -u; free -b | awk '/^Mem:/{print $2}'; grep MemTotal /proc/meminfo; "
              "df -B1 --output=size /home/user /tmp /dev/shm /var /run | tail -n +2; cat /proc/self/cgroup")  # fmt: skip
    lines = out["stdout"].splitlines()
    assert lines[0] == "1"  # 0.5 CPU runs on one
    assert lines[1] == "512"
    assert lines[2] == str(GIB)
    assert lines[3].split()[1:] == ["1048576", "kB"]
    home, tmp, shm, var, run_ = (int(x) for x in lines[4:9])
    assert home == tmp and 3.8 * GIB < home <= 4 * GIB  # ext4's own metadata takes a little
    assert (shm, run_) == (GIB // 4, GIB // 16)  # with /var on the host's system: about half the memory
    # /var is in the devbox's own system when it has one (on its disk, like everything it writes), else RAM.
    assert var == (home if machine_system() is not None else GIB // 4)
    # The host puts every process of the devbox in cgroups holding its limits.
    devbox_cgroups = {}
    for line in lines[9:]:
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            devbox_cgroups[name] = path
    assert _cgroup_file(devbox_cgroups, "memory", "memory.limit_in_bytes") == str(GIB)
    assert _cgroup_file(devbox_cgroups, "pids", "pids.max") == "512"
    assert _cgroup_file(devbox_cgroups, "cpu", "cpu.cfs_quota_us") == "50000"
    assert _cgroup_file(devbox_cgroups, "cpu", "cpu.cfs_period_us") == "100000"


@root_only
def test_a_memory_hog_is_killed_inside_with_137_and_a_reason(http: httpx.Client, make) -> None:  # noqa: ANN001
    view = make(X_SMALL)
    hog = run(http, view["id"], "python3 -c 'b = [bytearray(64 << 20) for _ in range(32)]; print(len(b))'")  # ≤ 2 GiB
    assert hog["exit_status"] == 137 and hog["killed_for"] == "out_of_memory"
    assert hog["stdout"] == ""
    assert "[devbox-mcp] killed (exit status 137): out of memory, the devbox's limit is 1 GiB" in hog["stderr"]
    assert "larger resource_size" in hog["stderr"]
    # Only the hog died: the devbox goes on, and so does the host.
    assert run(http, view["id"], "echo still here")["stdout"] == "still here\n"
    assert http.get(f"/v1/devboxes/{view['id']}").json()["status"] == "running"
    # A command killed otherwise gets no such note.
    killed = run(http, view["id"], "kill -9 $$")
    assert killed["exit_status"] == 137 and "out of memory" not in killed["stderr"] and "killed_for" not in killed


@root_only
def test_a_devbox_that_stops_after_oom_kills_fails_with_out_of_memory(
    http: httpx.Client, make, backend: RunningBackend
) -> None:  # noqa: ANN001
    view = make(X_SMALL)
    assert run(http, view["id"], "python3 -c 'b = [bytearray(64 << 20) for _ in range(32)]'")["exit_status"] == 137
    manager = backend._server.config.app.state.components[0].extra["devboxes"]
    # Fault injection: its pid 1 is killed, as the OOM killer does when nothing else is left to kill.
    os.kill(manager.get(view["id"]).sandbox.init_pid, signal.SIGKILL)
    r = http.post(f"/v1/devboxes/{view['id']}/wait_for_status", json={"statuses": ["failure", "suspended"]})
    assert r.json()["status"] == "failure" and r.json()["failure_reason"] == "out_of_memory", r.json()
    logs = http.get(f"/v1/devboxes/{view['id']}/logs").json()["logs"]
    assert any("ran out of memory (1 GiB)" in (e.get("message") or "") for e in logs)


# Starts up to 50 processes past the X_SMALL limit (512), then kills them all.
SPAWNER = """
import subprocess
procs = []
try:
    for _ in range(562):
        procs.append(subprocess.Popen(["sleep", "60"]))
except OSError as exc:
    print("refused after", len(procs), exc.errno)
for p in procs:
    p.kill()
    p.wait()
"""


@root_only
def test_a_bounded_fork_bomb_fails_inside_and_the_host_stays_responsive(http: httpx.Client, make) -> None:  # noqa: ANN001
    view = make(X_SMALL)  # 512 processes
    other = make({})
    http.post(f"/v1/devboxes/{view['id']}/write_file_contents", json={"file_path": "spawn.py", "contents": SPAWNER})
    out = run(http, view["id"], "python3 spawn.py")
    assert out["exit_status"] == 0, out
    words = out["stdout"].split()
    assert words[:2] == ["refused", "after"] and int(words[2]) < 512 and words[3] == "11", out  # EAGAIN
    # Another devbox, and this one once the sleeps are gone, run commands as before.
    assert run(http, other["id"], "echo fine")["stdout"] == "fine\n"
    assert run(http, view["id"], "echo fine")["stdout"] == "fine\n"


@root_only
def test_writing_past_the_smallest_disk_is_enospc_inside_and_the_host_keeps_its_space(
    http: httpx.Client, make, backend: RunningBackend
) -> None:  # noqa: ANN001
    view = make(TINY)  # a 2 GiB disk
    image = next(
        path for path in (backend.config.data_dir / "cow" / "fs" / "disks" / f"{view['id']}.img",
                          backend.config.data_dir / "devboxes" / view["id"] / "disk.img") if path.exists()
    )  # on the copy-on-write pool (cow.py) when this host has one  # fmt: skip
    # fallocate claims the space without writing it, then a bounded writer runs into the end.
    out = run(
        http, view["id"],
        "avail=$(df -B1M --output=avail . | tail -1); fallocate -l $((avail - 100))M fill && echo claimed && "
        "dd if=/dev/zero of=more bs=1M count=300; echo dd=$?",
    )  # fmt: skip
    assert out["stdout"].startswith("claimed\n") and out["stdout"].strip().endswith("dd=1"), out
    assert "No space left on device" in out["stderr"], out
    assert int(run(http, view["id"], "df -B1 --output=avail /home/user | tail -1")["stdout"]) < (1 << 20)
    # On the host the image holds only what was really written (sparse): far less than its size.
    assert image.stat().st_blocks * 512 < 2 * GIB // 2
    # The files API says whose disk is full.
    r = http.post(
        f"/v1/devboxes/{view['id']}/write_file_contents", json={"file_path": "note.txt", "contents": "x" * (2 << 20)}
    )
    assert r.status_code == 507, r.text
    assert "the devbox's disk is full (2 GiB" in r.json()["message"]
    # Freed inside, the space is there again; shut down, the image is gone.
    assert run(http, view["id"], "rm fill more && echo ok > note.txt && cat note.txt")["stdout"] == "ok\n"
    http.post(f"/v1/devboxes/{view['id']}/shutdown")
    assert not image.exists()


@root_only
def test_ram_backed_mounts_are_sized(http: httpx.Client, make) -> None:  # noqa: ANN001
    view = make(X_SMALL)
    out = run(http, view["id"], "head -c 300M /dev/zero > /dev/shm/big; echo shm=$?; touch /dev/new; echo dev=$?")
    assert "No space left on device" in out["stderr"]
    assert "shm=1" in out["stdout"] and "dev=1" in out["stdout"], out  # /dev itself is not the user's to write


# -- a host that cannot enforce everything ----------------------------------------------------------

NON_ROOT_UID = 4242
REPO = Path(__file__).resolve().parents[2]


def _as_another_user() -> tuple[list[str], dict[str, str]] | None:
    """How to run the backend as an ordinary user with this checkout's packages, if this host allows it."""
    site = [str(p) for p in map(Path, sys.path) if p.name == "site-packages" and str(p).startswith(str(REPO))]
    if os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists() or not site:
        return None
    prefix = ["setpriv", f"--reuid={NON_ROOT_UID}", f"--regid={NON_ROOT_UID}", "--clear-groups"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), *site]), "HOME": "/tmp"}
    probe = subprocess.run([*prefix, "/usr/bin/python3", "-c", "import mcp_server.local.server"],
                           env={"PATH": "/usr/bin:/bin", **env}, capture_output=True)  # fmt: skip
    return (prefix, env) if probe.returncode == 0 else None


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory an ordinary user can reach (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="sizes-nonroot-", dir="/tmp"))
    os.chown(path, NON_ROOT_UID, NON_ROOT_UID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_backend_that_cannot_enforce_a_limit_says_so_and_still_caps_processes(user_dir: Path) -> None:
    how = _as_another_user()
    if how is None:
        pytest.skip("cannot run the backend as an ordinary user here (needs root, setpriv, a readable checkout)")
    prefix, env = how
    with backend_process(user_dir / "data", user_dir / "log", python="/usr/bin/python3", prefix=prefix, env=env) as proc:
        with proc.client() as client:
            view = client.post("/v1/devboxes/create_and_await_running", json={"launch_parameters": X_SMALL}).json()
            assert view["status"] == "running", view
            gaps = view["resources"]["not_enforced"]
            assert set(gaps) == {"memory", "cpu", "nproc", "meminfo", "disk"}, gaps
            assert all("not root" in gaps[k] for k in ("memory", "cpu", "disk")), gaps
            assert "processes" not in gaps  # RLIMIT_NPROC, counted in the devbox's user namespace
            client.post(f"/v1/devboxes/{view['id']}/write_file_contents", json={"file_path": "spawn.py", "contents": SPAWNER})
            out = client.post(f"/v1/devboxes/{view['id']}/execute_sync", json={"command": "ulimit -u; python3 spawn.py"})
            lines = out.json()["stdout"].splitlines()
            assert lines[0] == "512"
            words = lines[1].split()
            assert words[:2] == ["refused", "after"] and int(words[2]) < 512 and words[3] == "11", lines
            client.post(f"/v1/devboxes/{view['id']}/shutdown")
        assert "devbox sizes are not fully enforced on this host: memory: the backend is not root" in proc.log


# -- accounting --------------------------------------------------------------------------------


def test_usage_is_the_size_over_active_and_elapsed_time(tmp_path: Path) -> None:
    # A CUSTOM_SIZE devbox whose history is known: running 5 s, suspended 10 s, running 3 s, shut down.
    t0 = 1_700_000_000_000
    history = [("provisioning", 0), ("running", 2_000), ("suspending", 7_000), ("suspended", 7_100),
               ("resuming", 17_000), ("running", 17_000), ("shutdown", 20_000)]  # fmt: skip
    record = {
        "id": "dbx_sized", "status": "shutdown", "create_time_ms": t0, "state_dir": "x",
        "state_transitions": [{"status": s, "transition_time_ms": t0 + dt} for s, dt in history],
        "end_time_ms": t0 + 20_000, "shutdown_reason": "api_shutdown",
        "size": {"name": "CUSTOM_SIZE", "cpu_cores": 0.5, "memory_gib": 4, "disk_gib": 6},
    }  # fmt: skip
    (tmp_path / "devboxes" / "dbx_sized").mkdir(parents=True)
    (tmp_path / "devboxes" / "dbx_sized" / "devbox.json").write_text(json.dumps(record))
    running = start_in_thread(tmp_path)
    try:
        with Runloop(bearer_token=running.api_key, base_url=running.base_url) as client:
            usage = client.devboxes.retrieve_resource_usage("dbx_sized")
        assert (usage.total_active_seconds, usage.total_elapsed_seconds) == (8, 20)
        assert usage.vcpu_seconds == 4  # 8 s x 0.5
        assert usage.memory_gb_seconds == 32  # 8 s x 4 GiB
        assert usage.disk_gb_seconds == 120  # 20 s x 6 GiB: disk counts while suspended too
    finally:
        running.stop()


def test_the_official_client_creates_a_sized_devbox_and_reads_its_usage(sdk) -> None:  # noqa: ANN001
    view = sdk.devboxes.create_and_await_running(
        launch_parameters={"resource_size_request": "CUSTOM_SIZE", "custom_cpu_cores": 1, "custom_gb_memory": 4,
                           "custom_disk_size": 2},
    )  # fmt: skip
    try:
        assert view.launch_parameters.resource_size_request == "CUSTOM_SIZE"
        assert view.launch_parameters.custom_cpu_cores == 1 and view.launch_parameters.custom_gb_memory == 4
        resources = (view.model_extra or {})["resources"]
        assert (resources["size"], resources["cpu_cores"], resources["memory_gib"], resources["disk_gib"]) == (
            "CUSTOM_SIZE", 1, 4, 2,
        )  # fmt: skip
        result = sdk.devboxes.execute_and_await_completion(view.id, command="nproc; grep MemTotal /proc/meminfo")
        if os.geteuid() == 0:
            assert result.stdout.split()[:3] == ["1", "MemTotal:", str(4 * 1024 * 1024)]
        usage = sdk.devboxes.retrieve_resource_usage(view.id)
        assert usage.id == view.id and usage.status == "running" and usage.end_time_ms is None
        assert usage.start_time_ms == view.create_time_ms
        # 1 vCPU and 4 GiB over the active seconds, 2 GiB over the elapsed ones.
        assert usage.vcpu_seconds in (usage.total_active_seconds, usage.total_active_seconds + 1)
        assert 4 * usage.total_active_seconds <= usage.memory_gb_seconds <= 4 * usage.total_active_seconds + 4
        assert 2 * usage.total_elapsed_seconds <= usage.disk_gb_seconds <= 2 * usage.total_elapsed_seconds + 2
        live = (sdk.devboxes.retrieve(view.id).model_extra or {})["resources"]
        if os.geteuid() == 0:
            assert live["memory_used_bytes"] > 0 and live["disk_used_bytes"] > 0 and live["cpu_seconds"] > 0
    finally:
        sdk.devboxes.shutdown(view.id)


def test_meminfo_says_the_size_and_what_the_cgroup_uses() -> None:
    text = meminfo_text(GIB, {"usage": 300 << 20, "file": 100 << 20, "shmem": 20 << 20, "inactive_file": 60 << 20,
                              "active_file": 40 << 20, "anon": 180 << 20})  # fmt: skip
    rows = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()}
    assert rows["MemTotal"] == 1024 * 1024
    assert rows["MemFree"] == (1024 - 300) * 1024
    assert rows["MemAvailable"] == (1024 - 300 + 80) * 1024  # free + file cache that is not shmem
    assert rows["SwapTotal"] == 0 and rows["Shmem"] == 20 * 1024 and rows["AnonPages"] == 180 * 1024


def test_cpu_lists_are_written_as_the_kernel_writes_them() -> None:
    from mcp_server.local.limits import cpu_ranges

    assert [cpu_ranges(c) for c in ([0], [1], [0, 1], [3, 0, 1, 2, 6], [1, 3, 4])] == ["0", "1", "0-1", "0-3,6", "1,3-4"]
