"""`devbox-mcp install`: per-client files and keys, merging, backups, dry runs, bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server.install import InstallError, devbox_command, install, parse_env

CMD = ["/opt/devbox/bin/devbox-mcp"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = devbox_command()
    return subprocess.run(
        [*exe, "install", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        ("darwin", {}, "home/Library/Application Support/Claude/claude_desktop_config.json"),
        ("win32", {"APPDATA": "/appdata"}, "/appdata/Claude/claude_desktop_config.json"),
        ("linux", {}, "home/.config/Claude/claude_desktop_config.json"),
        ("linux", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/Claude/claude_desktop_config.json"),
    ],
)
def test_claude_desktop_path_per_os(tmp_path: Path, platform: str, environ: dict, expected: str) -> None:
    home = tmp_path / "home"
    result = install(
        "claude-desktop", dry_run=True, command=CMD, platform=platform, home=home, environ=environ
    )
    assert str(result.path) == (expected if expected.startswith("/") else str(tmp_path / expected))


def test_windows_without_appdata_says_to_pass_config_path(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="--config-path"):
        install("claude-desktop", dry_run=True, command=CMD, platform="win32", home=tmp_path, environ={})


@pytest.mark.parametrize(
    ("client", "relative"),
    [("claude-code", ".claude.json"), ("cursor", ".cursor/mcp.json")],
)
def test_home_clients_default_paths(tmp_path: Path, client: str, relative: str) -> None:
    result = install(client, dry_run=True, command=CMD, home=tmp_path, environ={})
    assert result.path == tmp_path / relative


def test_vscode_uses_workspace_file_and_servers_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = install("vscode", command=CMD, environ={})
    assert result.path == tmp_path / ".vscode" / "mcp.json"
    data = json.loads(result.path.read_text())
    assert data == {"servers": {"devbox": {"type": "stdio", "command": CMD[0], "args": ["serve"]}}}


def test_new_file_is_private_and_has_no_env_without_env(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "claude_desktop_config.json"
    result = install("claude-desktop", config_path=path, command=CMD)
    assert result.action == "added" and result.backup is None
    assert json.loads(path.read_text()) == {"mcpServers": {"devbox": {"command": CMD[0], "args": ["serve"]}}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_merge_keeps_other_servers_and_keys_and_backs_up(tmp_path: Path) -> None:
    path = tmp_path / ".claude.json"
    original = {
        "numStartups": 12,
        "projects": {"/w": {"mcpServers": {"x": {"command": "x"}}}},
        "mcpServers": {"github": {"type": "stdio", "command": "npx", "args": ["gh"], "env": {"T": "1"}}},
    }
    path.write_text(json.dumps(original))
    os.chmod(path, 0o640)
    result = install("claude-code", config_path=path, env={"RUNLOOP_API_KEY": "rk_123"}, command=CMD)
    data = json.loads(path.read_text())
    assert data["numStartups"] == 12 and data["projects"] == original["projects"]
    assert data["mcpServers"]["github"] == original["mcpServers"]["github"]
    assert data["mcpServers"]["devbox"] == {
        "type": "stdio",
        "command": CMD[0],
        "args": ["serve"],
        "env": {"RUNLOOP_API_KEY": "rk_123"},
    }
    assert result.other_servers == ["github"]
    assert result.backup is not None and json.loads(result.backup.read_text()) == original
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_reinstall_updates_in_place_and_same_entry_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    install("cursor", config_path=path, command=CMD)
    again = install("cursor", config_path=path, command=CMD)
    assert again.action == "unchanged" and again.backup is None
    updated = install("cursor", config_path=path, command=CMD, env={"A": "b"})
    assert updated.action == "updated"
    assert list(json.loads(path.read_text())["mcpServers"]) == ["devbox"]


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text('{"mcpServers": {}}')
    before = path.read_text()
    result = install("cursor", config_path=path, command=CMD, dry_run=True)
    assert result.action == "added"
    assert path.read_text() == before
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"mcpServers": {', "not valid JSON"),
        ('// comment\n{"servers": {}}', "not valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"mcpServers": []}', "'mcpServers' is not an object"),
    ],
)
def test_unreadable_config_is_left_untouched(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(content)
    with pytest.raises(InstallError, match=message):
        install("cursor", config_path=path, command=CMD)
    assert path.read_text() == content
    assert list(tmp_path.iterdir()) == [path]


def test_parse_env() -> None:
    assert parse_env(["A=1", "B=x=y", "C="], {}) == {"A": "1", "B": "x=y", "C": ""}
    assert parse_env(["RUNLOOP_API_KEY"], {"RUNLOOP_API_KEY": "k"}) == {"RUNLOOP_API_KEY": "k"}
    with pytest.raises(InstallError, match="not set"):
        parse_env(["MISSING"], {})
    with pytest.raises(InstallError, match="KEY=VALUE"):
        parse_env(["1BAD=x"], {})
    with pytest.raises(InstallError, match="KEY=VALUE"):
        parse_env(["=x"], {})


def test_command_points_at_this_installation() -> None:
    command = devbox_command()
    assert Path(command[0]).is_absolute() and Path(command[0]).exists()
    assert Path(command[0]).parent == Path(sys.executable).parent


def test_cli_installs_and_masks_the_key(tmp_path: Path) -> None:
    path = tmp_path / "claude_desktop_config.json"
    path.write_text(json.dumps({"mcpServers": {"other": {"command": "o"}}}))
    done = run_cli(
        "claude-desktop",
        "--config-path",
        str(path),
        "--env",
        "RUNLOOP_API_KEY",
        env={"RUNLOOP_API_KEY": "rk_live_secret"},
    )
    assert done.returncode == 0, done.stderr
    assert "rk_live_secret" not in done.stdout + done.stderr
    assert "other" in done.stdout and "backup" in done.stdout
    written = json.loads(path.read_text())["mcpServers"]
    assert written["devbox"]["env"] == {"RUNLOOP_API_KEY": "rk_live_secret"}
    assert written["other"] == {"command": "o"}
    assert Path(written["devbox"]["command"]).exists()


def test_cli_dry_run_prints_entry_only(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    done = run_cli("vscode", "--dry-run", "--config-path", str(path), "--env", "X=secretvalue")
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout and '"servers"' in done.stdout
    assert "secretvalue" not in done.stdout
    assert not path.exists()


def test_cli_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text("{oops")
    done = run_cli("cursor", "--config-path", str(path))
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr and "Traceback" not in done.stderr
    bad_env = run_cli("cursor", "--config-path", str(path), "--env", "no spaces=1")
    assert bad_env.returncode == 2 and "KEY=VALUE" in bad_env.stderr
