"""Isolation seen through the public API: executions in two devboxes, as an agent would run them."""

from __future__ import annotations

import time

import pytest

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
        f"id -u; cat /etc/shadow; ls /root; ls {backend.config.data_dir}; grep CapEff /proc/self/status; unshare -U true",
    )
    assert result.stdout.splitlines()[0] == "1000"
    assert "CapEff:\t0000000000000000" in result.stdout
    assert "Permission denied" in result.stderr
    assert "/root" in result.stderr and str(backend.config.data_dir) in result.stderr
    assert "unshare failed" in result.stderr



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
    """nsenter'd commands used to run with neither; now both, as bubblewrap's own child (pid 1 here)."""
    a, _ = pair
    result = run(sdk, a.id, f"grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status /proc/1/status; {KEYCTL_PROBE}")
    own, first = _status_fields(result.stdout, "/proc/self/status"), _status_fields(result.stdout, "/proc/1/status")
    assert own == first == {"NoNewPrivs": "1", "Seccomp": "2"}, result.stdout
    # The filter is the one meant: the host's keyrings are out of reach.
    assert "keyctl -1 Operation not permitted" in result.stdout, result.stdout + result.stderr
