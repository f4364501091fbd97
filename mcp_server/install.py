"""`devbox-mcp install CLIENT`: add devbox-mcp to an MCP client's configuration file.

Each client keeps a JSON file mapping server names to launch commands. We merge our one entry
into it (other servers and unrelated keys stay exactly as they were), keep a timestamped backup
of the previous file, and write atomically, so an interrupted install never leaves a half file.

Claude Code: we write the user-scope entry (top-level `mcpServers` of `~/.claude.json`, what
`claude mcp add --scope user` writes) rather than a project `.mcp.json`, because `.mcp.json` is
meant to be committed and an API key in its `env` block would be shared with the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_NAME = "devbox"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class InstallError(Exception):
    """Something the user must fix; the message says what and how."""


@dataclass(frozen=True)
class Client:
    name: str
    servers_key: str
    stdio_type: bool  # whether entries carry "type": "stdio"
    default_path: Callable[[str, Path, Mapping[str, str]], Path]


def _claude_desktop_path(platform: str, home: Path, environ: Mapping[str, str]) -> Path:
    if platform == "darwin":
        return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if platform.startswith("win"):
        appdata = environ.get("APPDATA")
        if not appdata:
            raise InstallError(
                "APPDATA is not set, so the Claude Desktop config cannot be found; pass --config-path"
            )
        return Path(appdata) / "Claude" / "claude_desktop_config.json"
    config_home = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else home / ".config"
    return config_home / "Claude" / "claude_desktop_config.json"


CLIENTS: dict[str, Client] = {
    "claude-desktop": Client("Claude Desktop", "mcpServers", False, _claude_desktop_path),
    "claude-code": Client("Claude Code", "mcpServers", True, lambda _p, home, _e: home / ".claude.json"),
    "cursor": Client("Cursor", "mcpServers", False, lambda _p, home, _e: home / ".cursor" / "mcp.json"),
    "vscode": Client("VS Code", "servers", True, lambda _p, _h, _e: Path.cwd() / ".vscode" / "mcp.json"),
}


@dataclass(frozen=True)
class InstallResult:
    name: str
    path: Path
    action: str  # "added" | "updated" | "unchanged"
    entry: dict[str, Any]
    backup: Path | None
    other_servers: list[str]
    dry_run: bool


def devbox_command(executable: str = sys.executable) -> list[str]:
    """The absolute command that starts this installation of devbox-mcp, wherever the client runs it from."""
    scripts = Path(executable).parent
    for name in ("devbox-mcp", "devbox-mcp.exe"):
        candidate = scripts / name
        if candidate.is_file():
            return [str(candidate.absolute())]
    found = shutil.which("devbox-mcp")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(executable).absolute()), "-m", "mcp_server.cli"]


def parse_env(pairs: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """`KEY=VALUE` pairs; a bare `KEY` copies the value from the current environment (kept out of shell history)."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not ENV_NAME.match(key):
            raise InstallError(f"--env {key!r}: expected KEY=VALUE with KEY made of letters, digits and _")
        if not sep:
            if key not in environ:
                raise InstallError(f"--env {key}: no value given and {key} is not set in this shell")
            value = environ[key]
        env[key] = value
    return env


def build_entry(client: Client, command: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "stdio"} if client.stdio_type else {}
    entry["command"] = command[0]
    entry["args"] = [*command[1:], "serve"]
    if env:
        entry["env"] = dict(env)
    return entry


def _load(path: Path, servers_key: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstallError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); it was left untouched. "
            "Fix it (comments are not supported here) or move it aside, then run install again"
        ) from None
    if not isinstance(data, dict):
        raise InstallError(f"{path} holds a JSON {type(data).__name__}, not an object; it was left untouched")
    if not isinstance(data.get(servers_key, {}), dict):
        raise InstallError(f"{path}: {servers_key!r} is not an object; it was left untouched")
    return data


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600  # may hold an API key
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _free_backup_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.{stamp}.bak")
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.name}.{stamp}-{counter}.bak")
    return candidate


def install(
    client_id: str,
    *,
    env: Mapping[str, str] | None = None,
    dry_run: bool = False,
    config_path: Path | None = None,
    name: str = SERVER_NAME,
    command: list[str] | None = None,
    platform: str = sys.platform,
    home: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> InstallResult:
    client = CLIENTS[client_id]
    environ = os.environ if environ is None else environ
    path = config_path or client.default_path(platform, home or Path.home(), environ)
    entry = build_entry(client, command or devbox_command(), env or {})
    data = _load(path, client.servers_key)
    servers = data.setdefault(client.servers_key, {})
    previous = servers.get(name)
    action = "unchanged" if previous == entry else ("updated" if previous is not None else "added")
    others = [key for key in servers if key != name]
    servers[name] = entry
    backup = None
    if not dry_run and action != "unchanged":
        if path.exists():
            backup = _free_backup_name(path)
            shutil.copy2(path, backup)
        _write_atomically(path, json.dumps(data, indent=2) + "\n")
    return InstallResult(name, path, action, entry, backup, others, dry_run)


def masked(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as shown on screen: env values are secrets more often than not."""
    if "env" not in entry:
        return entry
    return {**entry, "env": {key: "***" for key in entry["env"]}}


def report(client_id: str, result: InstallResult) -> str:
    client = CLIENTS[client_id]
    shown = json.dumps({client.servers_key: {result.name: masked(result.entry)}}, indent=2)
    kept = ", ".join(result.other_servers) or "none"
    if result.dry_run:
        head = f"dry run: would write {result.path} ({result.action} entry; other servers kept: {kept}):"
    else:
        head = f"{client.name}: {result.action} the devbox-mcp entry in {result.path} (other servers kept: {kept})"
        if result.backup:
            head += f"\nbackup of the previous file: {result.backup}"
        head += f"\nrestart {client.name} to load it. Entry:"
    return f"{head}\n{shown}"


def main(
    client_id: str, *, env_pairs: Sequence[str], dry_run: bool, config_path: Path | None, name: str
) -> int:
    try:
        env = parse_env(env_pairs, os.environ)
        result = install(client_id, env=env, dry_run=dry_run, config_path=config_path, name=name)
    except InstallError as exc:
        print(f"devbox-mcp install: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"devbox-mcp install: cannot write the config: {exc.strerror} ({exc.filename})", file=sys.stderr
        )
        return 2
    print(report(client_id, result))
    return 0
