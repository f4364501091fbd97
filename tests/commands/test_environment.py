"""Settings from the environment, on both sides: a value that is not one stops the command at once
with a message naming the variable (exit 2, no traceback), before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server.local.config import ENV_SECONDS, env_seconds

EXE = str(Path(sys.executable).with_name("devbox-mcp"))


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLOOP_", "DEVBOX_"))}
    return subprocess.run(
        [EXE, *args], env={**clean, "XDG_DATA_HOME": str(tmp_path), **env},
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_a_backend_duration_that_is_not_one_is_refused(raw: str) -> None:
    name = "DEVBOX_AXON_SSE_IDLE_SECONDS"
    with pytest.raises(ValueError, match=f"^{name}='{raw}' is not a number of seconds"):
        env_seconds(name, {name: raw})


def test_backend_durations_default_when_unset_and_read_when_set() -> None:
    for name, default in ENV_SECONDS.items():
        assert env_seconds(name, {}) == default
        assert env_seconds(name, {name: " 0.25 "}) == 0.25


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    [
        (["local-api", "--port", "0"], "DEVBOX_AXON_SSE_IDLE_SECONDS", "soon"),
        (["serve"], "DEVBOX_AXON_IDLE_CLOSE_SECONDS", "-5"),
        (["serve"], "DEVBOX_MCP_WAIT_SECONDS", "later"),
    ],
)
def test_commands_stop_with_the_variable_named(args: list[str], variable: str, value: str, tmp_path: Path) -> None:
    done = run(args, tmp_path, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert f"{variable}={value!r}" in done.stderr
    assert "Traceback" not in done.stderr
