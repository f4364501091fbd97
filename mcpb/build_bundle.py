"""`make bundle`: the MCP Bundle (`.mcpb`) that installs devbox-mcp into Claude Desktop in one click.

The bundle carries the source (pyproject.toml, README.md, LICENSE, mcp_server/) and a manifest
of server type `uv` (manifest 0.4): the host installs the dependencies listed in pyproject.toml
with its own uv and starts `uv run --directory <bundle> devbox-mcp serve`, so one bundle serves
every platform and needs no Python on the user's machine. Files are staged from an allow-list,
never by copying the working tree, so a .venv, devbox data, test output or a stray key file
cannot end up in the archive. The bundle's pyproject.toml leaves out the optional dependencies
(the test tools): uv locks every extra, so the host would resolve them all at install time, and a
conflict among test tools could break a user's install. The manifest's name, version, licence and
Python requirement come from pyproject.toml and its tool list from tool_schemas/: one place each.

    python mcpb/build_bundle.py [--outdir dist] [--stage build/bundle] [--root .]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # this repository: the default source tree; holds .tools/
TOOLS = ROOT / ".tools"
NODE = TOOLS / "node" / "bin" / "node"
MCPB_CLI = TOOLS / "node_modules" / "@anthropic-ai" / "mcpb" / "dist" / "cli" / "cli.js"
# What the host needs to build and run the package: setuptools reads README.md and LICENSE too.
TOP_FILES = ["pyproject.toml", "README.md", "LICENSE"]
PACKAGE = "mcp_server"

LONG_DESCRIPTION = """\
Gives Claude real Linux machines (devboxes): create one, run shell commands with live output, \
read and write files, follow the logs of long-running commands, publish events to an axon \
(an event stream) and query its history with SQL.

**Where the devboxes run**

- **With a Runloop API key** (any platform): on Runloop's cloud. Enter the key in the \
extension settings.
- **Without a key, on Linux only**: on this machine, each devbox a bubblewrap sandbox \
(install `bubblewrap`, and `slirp4netns` for outbound network). macOS and Windows have no \
local backend: there the key is required.
"""


def project(root: Path) -> dict[str, Any]:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def tools(root: Path) -> list[dict[str, str]]:
    """Name and description of every tool, as published (tool_schemas/ is generated from the code)."""
    listed = []
    for path in sorted((root / "tool_schemas").glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        listed.append({"name": path.stem, "description": doc["description"]})
    return listed


def manifest(root: Path) -> dict[str, Any]:
    meta = project(root)
    return {
        "manifest_version": "0.4",
        "name": meta["name"],
        "display_name": "Devbox: Linux sandboxes",
        "version": meta["version"],
        "description": (
            "Real Linux sandboxes for Claude: run commands, edit files, query event streams. "
            "Runs on Runloop's cloud with an API key (any platform), or on this machine without one (Linux only)."
        ),
        "long_description": LONG_DESCRIPTION,
        "author": {"name": "devbox-mcp contributors"},
        "license": meta["license"],
        "keywords": ["sandbox", "linux", "devbox", "runloop", "shell", "code execution"],
        "server": {
            "type": "uv",
            "entry_point": f"{PACKAGE}/__main__.py",
            # With type "uv" the host runs its own uv with these arguments; the schema requires mcp_config.
            "mcp_config": {
                "command": "uv",
                "args": ["run", "--directory", "${__dirname}", "devbox-mcp", "serve"],
                "env": {"RUNLOOP_API_KEY": "${user_config.runloop_api_key}"},
            },
        },
        "user_config": {
            "runloop_api_key": {
                "type": "string",
                "title": "Runloop API key",
                "description": (
                    "Runs devboxes on Runloop's cloud. Leave empty on Linux to run them on this machine; "
                    "required on macOS and Windows."
                ),
                "sensitive": True,
                "required": False,
                # An unset optional value would reach the server as the literal "${user_config...}".
                "default": "",
            }
        },
        "tools": tools(root),
        "compatibility": {
            "platforms": ["darwin", "linux", "win32"],
            "runtimes": {"python": meta["requires-python"]},
        },
    }


def runtime_pyproject(root: Path) -> str:
    """pyproject.toml without its `[project.optional-dependencies]` table; nothing else changes."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() == "[project.optional-dependencies]"
        if not skipping:
            kept.append(line)
    result = "".join(kept)
    original, stripped = tomllib.loads(text), tomllib.loads(result)
    original["project"].pop("optional-dependencies", None)
    if stripped != original:
        raise SystemExit("pyproject.toml: could not drop [project.optional-dependencies] cleanly")
    return result


def package_files(root: Path) -> list[Path]:
    """The package's Python sources, as setuptools finds them for the wheel: the `.py` files of
    `mcp_server` and of each directory below it that has an `__init__.py` (so no caches, and no
    scratch directory or virtualenv someone left inside the package)."""
    files, pending = [], [root / PACKAGE]
    while pending:
        package = pending.pop()
        for path in package.iterdir():
            if path.is_dir() and (path / "__init__.py").is_file():
                pending.append(path)
            elif path.is_file() and path.suffix == ".py":
                files.append(path)
    return sorted(files)


def stage(root: Path, directory: Path) -> list[str]:
    """Write the bundle's files into an empty `directory`; return their relative paths."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    written = []
    for source in [root / name for name in TOP_FILES] + package_files(root):
        relative = source.relative_to(root)
        written.append(relative.as_posix())
        if relative.as_posix() == "pyproject.toml":
            (directory / "pyproject.toml").write_text(runtime_pyproject(root), encoding="utf-8")
            continue
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (directory / "manifest.json").write_text(json.dumps(manifest(root), indent=2) + "\n", encoding="utf-8")
    return ["manifest.json", *written]


def mcpb(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the pinned mcpb CLI (installed by .ci/node-tools) with the Node it installs."""
    if not (NODE.exists() and MCPB_CLI.exists()):
        raise SystemExit("the mcpb CLI is missing: run .ci/node-tools (make install does)")
    return subprocess.run(
        [str(NODE), str(MCPB_CLI), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def build(root: Path, outdir: Path, stage_dir: Path) -> Path:
    stage(root, stage_dir)
    meta = project(root)
    out = outdir / f"{meta['name']}-{meta['version']}.mcpb"
    outdir.mkdir(parents=True, exist_ok=True)
    for step in (("validate", stage_dir / "manifest.json"), ("pack", stage_dir, out)):
        done = mcpb(*step)
        if done.returncode != 0:
            raise SystemExit(f"mcpb {step[0]} failed:\n{done.stdout}{done.stderr}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "bundle")
    parser.add_argument("--root", type=Path, default=ROOT, help="source tree to build from")
    args = parser.parse_args(argv)
    out = build(args.root.resolve(), args.outdir, args.stage)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
