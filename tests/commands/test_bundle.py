"""`make bundle`: the MCP Bundle for Claude Desktop. The pinned official mcpb CLI validates and
reads it; it holds the package and nothing else of the tree it is built from (no venv, tests,
data, caches or secrets); its manifest says what a host needs (uv server type, an optional
sensitive Runloop key, honest platforms); and it starts the way a host starts it: mcpb's own
config resolver gives the command, uv installs the package from the bundle, and a real MCP client
lists the tools and reaches the embedded backend through it."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from support.mcp_client import call_ok
from support.packaging import (
    MCPB_PACKAGE,
    NODE,
    ROOT,
    UV,
    clean_env,
    mcpb,
    needs_mcpb,
    needs_wheelhouse,
    package_sources,
    run,
    uv_offline_env,
)

from mcp_server.local import service

pytestmark = needs_mcpb

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
TOOL_NAMES = sorted(p.stem for p in (ROOT / "tool_schemas").glob("*.json"))
SECRET = "rk_bundle_test_secret_7f3a9c"
LOCAL_SECRET = "dbxlocal_bundle_test_secret_51e0"



@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the working tree, with what a careless packer would sweep up planted in it."""
    tree = tmp_path_factory.mktemp("tree") / "devbox-mcp"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".tools", "dist", "build", "*.egg-info", "__pycache__", ".data"))
    planted = {
        ".env": f"RUNLOOP_API_KEY={SECRET}\n",
        ".venv/lib/python3.11/site-packages/leak.py": "x = 1\n",
        ".data/devboxes/state.json": json.dumps({"api_key": LOCAL_SECRET}),
        "mcp_server/__pycache__/cli.cpython-311.pyc": "\0",
        "mcp_server/.venv/lib/site.py": "x = 1\n",
        "mcp_server/scratch/notes.py": f"KEY = {SECRET!r}\n",
        "mcp_server/local/secret.key": SECRET,
        "dist/devbox-mcp-0.0.1.mcpb": "old",
    }
    for name, text in planted.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    return tree


@pytest.fixture(scope="module")
def bundle(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make bundle` runs, from the planted tree, with secrets in the builder's environment."""
    out = tmp_path_factory.mktemp("out")
    stage = tmp_path_factory.mktemp("stage")
    done = run(
        [sys.executable, ROOT / "mcpb" / "build_bundle.py", "--root", tree, "--outdir", out, "--stage", stage],
        env=clean_env(RUNLOOP_API_KEY=SECRET, DEVBOX_LOCAL_API_KEY=LOCAL_SECRET),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out / f"devbox-mcp-{VERSION}.mcpb"


@pytest.fixture(scope="module")
def contents(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture(scope="module")
def manifest(contents: dict[str, bytes]) -> dict[str, Any]:
    return json.loads(contents["manifest.json"])


def test_the_official_cli_validates_and_reads_the_bundle(bundle: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "unpacked"
    done = mcpb("unpack", bundle, unpacked)
    assert done.returncode == 0, done.stdout + done.stderr
    done = mcpb("validate", unpacked / "manifest.json")
    assert done.returncode == 0 and "Manifest schema validation passes!" in done.stdout, done.stdout + done.stderr
    done = mcpb("info", bundle)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"devbox-mcp-{VERSION}.mcpb" in done.stdout


def test_bundle_holds_the_package_and_nothing_else(contents: dict[str, bytes]) -> None:
    assert set(contents) == {"manifest.json", "pyproject.toml", "README.md", "LICENSE"} | package_sources()
    for name, data in contents.items():
        assert SECRET.encode() not in data and LOCAL_SECRET.encode() not in data, name


def test_bundle_pyproject_is_the_project_without_its_test_extras(contents: dict[str, bytes]) -> None:
    """uv locks every extra: the host would otherwise resolve all test tools at install time."""
    shipped = tomllib.loads(contents["pyproject.toml"].decode())
    expected = json.loads(json.dumps(PYPROJECT))
    del expected["project"]["optional-dependencies"]
    assert shipped == expected


def test_manifest_declares_uv_runtime_an_optional_secret_key_and_honest_platforms(
    manifest: dict[str, Any], contents: dict[str, bytes]
) -> None:
    assert manifest["manifest_version"] == "0.4"
    assert (manifest["name"], manifest["version"], manifest["license"]) == ("devbox-mcp", VERSION, "MIT")
    server = manifest["server"]
    assert server["type"] == "uv" and server["entry_point"] in contents
    assert server["mcp_config"]["env"] == {"RUNLOOP_API_KEY": "${user_config.runloop_api_key}"}
    key = manifest["user_config"]["runloop_api_key"]
    assert key["sensitive"] is True and key["required"] is False and key["default"] == ""
    compatibility = manifest["compatibility"]
    assert compatibility["platforms"] == ["darwin", "linux", "win32"]  # the cloud works everywhere...
    assert "Linux only" in manifest["description"]  # ...the embedded backend does not, and it says so
    assert "required on macOS and Windows" in key["description"]
    assert compatibility["runtimes"] == {"python": PYPROJECT["project"]["requires-python"]}
    assert [t["name"] for t in manifest["tools"]] == TOOL_NAMES


def host_config(manifest: dict[str, Any], directory: Path, user_config: dict[str, str]) -> dict[str, Any]:
    """The launch command a host derives from the manifest, by mcpb's own resolver."""
    script = (
        f"import {{ getMcpConfigForManifest }} from {json.dumps(str(MCPB_PACKAGE / 'dist' / 'shared' / 'config.js'))};\n"
        "const [manifest, dir, userConfig] = JSON.parse(process.argv[1]);\n"
        "const config = await getMcpConfigForManifest({manifest, extensionPath: dir, userConfig,\n"
        "  systemDirs: {HOME: '/home/u'}, pathSeparator: '/'});\n"
        "console.log(JSON.stringify(config));\n"
    )
    done = run([NODE, "--input-type=module", "-e", script, json.dumps([manifest, str(directory), user_config])])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_host_passes_the_key_only_when_the_user_gives_one(manifest: dict[str, Any], tmp_path: Path) -> None:
    without = host_config(manifest, tmp_path, {})
    assert without["command"] == "uv"
    assert without["args"] == ["run", "--directory", str(tmp_path), "devbox-mcp", "serve"]
    # Empty, not the literal "${user_config.runloop_api_key}" (which the server would send as a key).
    assert without["env"] == {"RUNLOOP_API_KEY": ""}
    assert host_config(manifest, tmp_path, {"runloop_api_key": SECRET})["env"] == {"RUNLOOP_API_KEY": SECRET}


@needs_wheelhouse
@pytest.mark.anyio
async def test_bundle_starts_with_uv_and_serves_mcp(bundle: Path, manifest: dict[str, Any], tmp_path: Path) -> None:
    """Unpacked and started as the host does: its uv, the resolved arguments and environment.

    One difference, for the test only: the host's uv resolves the lock for every platform from the
    package index; offline, the wheelhouse has wheels for this machine alone, so the unpacked
    pyproject.toml gets a `[tool.uv] environments` entry naming this machine.
    """
    directory = tmp_path / "extension"
    assert mcpb("unpack", bundle, directory).returncode == 0
    with (directory / "pyproject.toml").open("a") as pyproject:
        here = f"sys_platform == '{sys.platform}' and python_version == '{sys.version_info[0]}.{sys.version_info[1]}'"
        pyproject.write(f"\n[tool.uv]\nenvironments = [{json.dumps(here)}]\n")
    config = host_config(manifest, directory, {})
    env = uv_offline_env(tmp_path, XDG_DATA_HOME=str(tmp_path / "data"), **config["env"])
    params = StdioServerParameters(command=str(UV), args=config["args"], env=env, cwd=str(tmp_path))
    try:
        with (tmp_path / "stderr.log").open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode="auto") as client:
                listed = await client.list_tools()
                assert sorted(t.name for t in listed.tools) == TOOL_NAMES
                await call_ok(client, "list_devboxes", {})
    finally:
        service.stop(tmp_path / "data" / "devbox-mcp")  # the shared backend the bundle's server started
    stderr = (tmp_path / "stderr.log").read_text()
    assert "embedded backend" in stderr
    assert (directory / ".venv").is_dir()  # uv installed it into the extension's directory
