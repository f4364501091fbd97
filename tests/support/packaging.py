"""What the packaging tests share: the pinned mcpb CLI (.ci/node-tools), the wheelhouse of
dependencies (.ci/wheelhouse), and environments in which pip and uv install from that wheelhouse
alone: no package index, no user or machine configuration, no Runloop key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
NODE = TOOLS / "node" / "bin" / "node"
MCPB_PACKAGE = TOOLS / "node_modules" / "@anthropic-ai" / "mcpb"
MCPB_CLI = MCPB_PACKAGE / "dist" / "cli" / "cli.js"
WHEELHOUSE = TOOLS / "wheelhouse"
UV = Path(sys.executable).with_name("uv")

needs_wheelhouse = pytest.mark.skipif(
    not (WHEELHOUSE / ".requirements").is_file(),
    reason="no wheelhouse: run .ci/wheelhouse (make install does)",
)
needs_mcpb = pytest.mark.skipif(
    not (NODE.exists() and MCPB_CLI.exists()), reason="mcpb CLI not installed: run .ci/node-tools (make install does)"
)

# Settings of the calling shell that would change what is installed from where, or what is printed.
_DROPPED_PREFIXES = ("RUNLOOP_", "DEVBOX_", "PIP_", "UV_", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    env.update(extra)
    return env


def pip_offline_env() -> dict[str, str]:
    return clean_env(
        PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELHOUSE),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )


def uv_offline_env(scratch: Path, **extra: str) -> dict[str, str]:
    """uv as a host runs it, but fed from the wheelhouse, with this interpreter (the wheels are for it)."""
    return clean_env(
        UV_OFFLINE="1", UV_NO_INDEX="1", UV_FIND_LINKS=str(WHEELHOUSE), UV_NO_CONFIG="1",
        UV_PYTHON=sys.executable, UV_PYTHON_DOWNLOADS="never",
        UV_CACHE_DIR=str(scratch / "uv-cache"), UV_TOOL_DIR=str(scratch / "uv-tools"), **extra,
    )


def package_sources() -> set[str]:
    """The package's files as setuptools' own finder sees them for the wheel (pyproject: mcp_server*)."""
    files = set()
    for package in find_packages(ROOT, include=["mcp_server*"]):
        directory = ROOT / package.replace(".", "/")
        files |= {p.relative_to(ROOT).as_posix() for p in directory.glob("*.py")}
    return files


def run(command: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 300)
    kwargs.setdefault("env", clean_env())
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


def mcpb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run([NODE, MCPB_CLI, *args], env=clean_env(NO_COLOR="1"))
