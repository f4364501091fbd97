"""`make dist`: the wheel and sdist build without a single warning, hold the package (and only
the package), and the wheel installs into a fresh venv where `devbox-mcp`, `python -m mcp_server`
and `uvx --from <wheel> devbox-mcp` work as the README says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.packaging import (
    ROOT,
    UV,
    needs_wheelhouse,
    package_sources,
    pip_offline_env,
    run,
    uv_offline_env,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]



@dataclass
class Built:
    output: str
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """What `make dist` runs: the sdist, then the wheel built from the unpacked sdist."""
    out = tmp_path_factory.mktemp("dist")
    done = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Built(output, wheel, sdist)


def test_build_prints_no_warning(built: Built) -> None:
    noisy = [line for line in built.output.splitlines() if re.search(r"warn|deprecat", line, re.IGNORECASE)]
    assert noisy == []
    assert built.wheel.name == f"devbox_mcp-{VERSION}-py3-none-any.whl"


def test_wheel_holds_the_package_its_licence_and_entry_point(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"devbox_mcp-{VERSION}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert {n for n in names if not n.startswith(info)} == package_sources()
    assert f"{info}/licenses/LICENSE" in names
    assert "License-Expression: MIT" in metadata.splitlines()
    assert f"Requires-Python: {PYPROJECT['project']['requires-python']}" in metadata.splitlines()
    assert "devbox-mcp = mcp_server.commands.cli:main" in entry_points


def test_sdist_holds_the_source_and_no_tests(built: Built) -> None:
    top = f"devbox_mcp-{VERSION}/"
    with tarfile.open(built.sdist) as sdist:
        names = {m.name.removeprefix(top) for m in sdist.getmembers() if m.isfile()}
    generated = {"PKG-INFO", "setup.cfg"}
    egg_info = {n for n in names if n.startswith("devbox_mcp.egg-info/")}
    assert names - generated - egg_info == {"pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"} | package_sources()


@needs_wheelhouse
def test_wheel_installs_into_a_fresh_venv_and_runs(built: Built, tmp_path: Path) -> None:
    """The way pipx installs it: a new venv, the wheel, its dependencies (from the wheelhouse)."""
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python, exe = venv / "bin" / "python", venv / "bin" / "devbox-mcp"
    done = run([sys.executable, "-m", "pip", "--python", python, "install", built.wheel], env=pip_offline_env())
    assert done.returncode == 0, done.stdout + done.stderr
    away = {"cwd": tmp_path}  # not the repository, whose mcp_server/ would shadow the installed one

    for command in ([exe, "--help"], [python, "-m", "mcp_server", "--help"]):
        done = run(command, **away)
        assert done.returncode == 0 and "serve MCP" in done.stdout, done.stderr

    # Every module imports from the installed copy (a module left out of the wheel fails here).
    script = (
        "import importlib, pkgutil, mcp_server\n"
        "for m in pkgutil.walk_packages(mcp_server.__path__, 'mcp_server.'):\n"
        "    if m.name != 'mcp_server.__main__': importlib.import_module(m.name)\n"
        "print(mcp_server.__file__)"
    )
    done = run([python, "-c", script], **away)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(venv)

    # The installed server publishes exactly the checked-in tool schemas.
    done = run([exe, "schemas"], **away)
    assert done.returncode == 0, done.stderr
    checked_in = {p.stem: json.loads(p.read_text()) for p in (ROOT / "tool_schemas").glob("*.json")}
    assert json.loads(done.stdout) == checked_in


@needs_wheelhouse
def test_uvx_runs_the_wheel(built: Built, tmp_path: Path) -> None:
    """`uvx --from ./dist/devbox_mcp-<version>-py3-none-any.whl devbox-mcp`, as in the README."""
    done = run([UV, "tool", "run", "--from", built.wheel, "devbox-mcp", "--help"],
               env=uv_offline_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "serve MCP" in done.stdout


def test_make_dist_runs_the_build_this_test_checks() -> None:
    """The Makefile target and the fixture above build the same way (offline, with this venv's setuptools)."""
    done = subprocess.run(["make", "-n", "dist"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "-m build --no-isolation --outdir dist ." in done.stdout
