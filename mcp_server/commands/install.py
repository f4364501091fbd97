"""`devbox-mcp install CLIENT`: add devbox-mcp to an MCP client's configuration file.

Each client keeps a file (JSON, or TOML for Codex) mapping server names to launch commands. We
merge our one entry into it (other servers and unrelated keys stay exactly as they were, TOML
comments included), keep a timestamped backup of the previous file, and write atomically, so an
interrupted install never leaves a half file.

Claude Code: we write the user-scope entry (top-level `mcpServers` of `~/.claude.json`, what
`claude mcp add --scope user` writes) rather than a project `.mcp.json`, because `.mcp.json` is
meant to be committed and an API key in its `env` block would be shared with the repository.

Codex (`[mcp_servers.devbox]` in `$CODEX_HOME/config.toml`, default `~/.codex/config.toml`) needs
two more keys to be usable, both measured with Codex CLI 0.171.0:
- `default_tools_approval_mode = "approve"`: otherwise `codex exec` (approval policy `never`)
  refuses every tool not annotated read-only ("MCP tool call requires approval, but approval policy
  is never"): execute, write_file, sql_query... The tools act inside devboxes (sandboxes), which is
  what makes pre-approving them reasonable.
- `required = true` (with `startup_timeout_sec`): Codex waits only 1 s for an optional server
  before the first model request (`mcp_optional_startup_grace_ms`); a cold start of devbox-mcp can
  take longer, and then the model is not given the tools at all. A required server is waited for.
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
from typing import Any, Literal

import tomlkit
from tomlkit.exceptions import TOMLKitError

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
    file_format: Literal["json", "toml"] = "json"
    extra: tuple[tuple[str, Any], ...] = ()  # keys every entry for this client carries


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


def _codex_path(_platform: str, home: Path, environ: Mapping[str, str]) -> Path:
    codex_home = Path(environ["CODEX_HOME"]) if environ.get("CODEX_HOME") else home / ".codex"
    return codex_home / "config.toml"


# Why each key: see the module docstring.
CODEX_EXTRA = (("default_tools_approval_mode", "approve"), ("required", True), ("startup_timeout_sec", 30))

CLIENTS: dict[str, Client] = {
    "claude-desktop": Client("Claude Desktop", "mcpServers", False, _claude_desktop_path),
    "claude-code": Client("Claude Code", "mcpServers", True, lambda _p, home, _e: home / ".claude.json"),
    "cursor": Client("Cursor", "mcpServers", False, lambda _p, home, _e: home / ".cursor" / "mcp.json"),
    "vscode": Client("VS Code", "servers", True, lambda _p, _h, _e: Path.cwd() / ".vscode" / "mcp.json"),
    "codex": Client("Codex", "mcp_servers", False, _codex_path, "toml", CODEX_EXTRA),
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
    return [str(Path(executable).absolute()), "-m", "mcp_server"]


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
    entry.update(client.extra)
    return entry


def _read(path: Path) -> str:
    if not path.exists():
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}") from None


def _load_json(path: Path, text: str, servers_key: str) -> dict[str, Any]:
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


def _load_toml(path: Path, text: str, servers_key: str) -> tomlkit.TOMLDocument:
    """The document with its comments and layout, so that writing it back changes only our entry."""
    try:
        document = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise InstallError(
            f"{path} is not valid TOML ({exc}); it was left untouched. "
            "Fix it or move it aside, then run install again"
        ) from None
    if servers_key not in document:
        document[servers_key] = tomlkit.table(is_super_table=True)  # no empty [mcp_servers] header
    elif not isinstance(document[servers_key], dict):
        raise InstallError(f"{path}: {servers_key!r} is not a table; it was left untouched")
    return document


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


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
    text = _read(path)
    toml = client.file_format == "toml"
    data = _load_toml(path, text, client.servers_key) if toml else _load_json(path, text, client.servers_key)
    servers = data.setdefault(client.servers_key, {})
    previous = _plain(servers.get(name))
    if not isinstance(previous, dict | None):
        raise InstallError(
            f"{path}: {client.servers_key}.{name} is not a table/object; it was left untouched"
        )
    action = "unchanged" if previous == entry else ("updated" if previous is not None else "added")
    others = [key for key in servers if key != name]
    servers[name] = entry
    backup = None
    if not dry_run and action != "unchanged":
        if path.exists():
            backup = _free_backup_name(path)
            shutil.copy2(path, backup)
        _write_atomically(path, tomlkit.dumps(data) if toml else json.dumps(data, indent=2) + "\n")
    return InstallResult(name, path, action, entry, backup, others, dry_run)


def masked(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as shown on screen: env values are secrets more often than not."""
    if "env" not in entry:
        return entry
    return {**entry, "env": {key: "***" for key in entry["env"]}}


def shown_entry(client_id: str, result: InstallResult) -> str:
    """The entry as it stands in the client's file, env values masked."""
    client = CLIENTS[client_id]
    if client.file_format == "toml":
        table = tomlkit.document()
        table[client.servers_key] = tomlkit.table(is_super_table=True)
        table[client.servers_key][result.name] = masked(result.entry)
        return tomlkit.dumps(table).strip()
    return json.dumps({client.servers_key: {result.name: masked(result.entry)}}, indent=2)


def report(client_id: str, result: InstallResult) -> str:
    client = CLIENTS[client_id]
    kept = ", ".join(result.other_servers) or "none"
    if result.dry_run:
        head = f"dry run: would write {result.path} ({result.action} entry; other servers kept: {kept}):"
    else:
        head = f"{client.name}: {result.action} the devbox-mcp entry in {result.path} (other servers kept: {kept})"
        if result.backup:
            head += f"\nbackup of the previous file: {result.backup}"
        head += f"\nrestart {client.name} to load it. Entry:"
    return f"{head}\n{shown_entry(client_id, result)}"


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
