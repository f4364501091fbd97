"""`devbox-mcp install`: per-client files and keys, merging, backups, dry runs, bad input."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server.commands.install import InstallError, devbox_command, install, parse_env

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


@pytest.mark.anyio
async def test_written_entry_starts_a_working_server(tmp_path: Path, backend) -> None:
    """What the client will run: the command, args and env exactly as written serve our tools."""
    from mcp import Client, StdioServerParameters

    path = tmp_path / "claude_desktop_config.json"
    env = {"RUNLOOP_API_KEY": backend.api_key, "RUNLOOP_BASE_URL": backend.base_url}
    install("claude-desktop", config_path=path, env=env)
    entry = json.loads(path.read_text())["mcpServers"]["devbox"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env={**os.environ, **entry["env"]})
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"create_devbox", "execute"} <= names


# ---------------------------------------------------------------- Codex (TOML)

CODEX_ENTRY = {
    "command": CMD[0],
    "args": ["serve"],
    "default_tools_approval_mode": "approve",
    "required": True,
    "startup_timeout_sec": 30,
}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, "home/.codex/config.toml"), ({"CODEX_HOME": "/ch"}, "/ch/config.toml")],
)
def test_codex_path_follows_codex_home(tmp_path: Path, environ: dict, expected: str) -> None:
    result = install("codex", dry_run=True, command=CMD, home=tmp_path / "home", environ=environ)
    assert str(result.path) == (expected if expected.startswith("/") else str(tmp_path / expected))


def test_codex_new_file_has_the_keys_codex_exec_needs(tmp_path: Path) -> None:
    import tomllib

    path = tmp_path / "config.toml"
    result = install("codex", config_path=path, command=CMD)
    assert result.action == "added"
    assert tomllib.loads(path.read_text()) == {"mcp_servers": {"devbox": CODEX_ENTRY}}
    assert "[mcp_servers]\n" not in path.read_text()  # no empty super-table header
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_codex_merge_keeps_comments_other_servers_and_keys(tmp_path: Path) -> None:
    import tomllib

    path = tmp_path / "config.toml"
    original = (
        "# my settings\n"
        'model = "o3"  # the one I like\n'
        "\n"
        "[mcp_servers.github]\n"
        'command = "npx"\n'
        'args = ["gh"]\n'
        "\n"
        "[mcp_servers.devbox]\n"
        'command = "/old/devbox-mcp"\n'
        "\n"
        "[profiles.fast]\n"
        'model = "o4-mini"\n'
    )
    path.write_text(original)
    result = install("codex", config_path=path, command=CMD, env={"RUNLOOP_API_KEY": "rk_1"})
    text = path.read_text()
    assert text.startswith('# my settings\nmodel = "o3"  # the one I like\n')
    data = tomllib.loads(text)
    assert data["model"] == "o3" and data["profiles"] == {"fast": {"model": "o4-mini"}}
    assert data["mcp_servers"]["github"] == {"command": "npx", "args": ["gh"]}
    assert data["mcp_servers"]["devbox"] == {**CODEX_ENTRY, "env": {"RUNLOOP_API_KEY": "rk_1"}}
    assert result.action == "updated" and result.other_servers == ["github"]
    assert result.backup is not None and result.backup.read_text() == original
    again = install("codex", config_path=path, command=CMD, env={"RUNLOOP_API_KEY": "rk_1"})
    assert again.action == "unchanged" and path.read_text() == text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[mcp_servers\n", "not valid TOML"),
        ('mcp_servers = "x"\n', "'mcp_servers' is not a table"),
        ('[mcp_servers]\ndevbox = "x"\n', "mcp_servers.devbox is not a table"),
    ],
)
def test_codex_unreadable_config_is_left_untouched(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(content)
    with pytest.raises(InstallError, match=message):
        install("codex", config_path=path, command=CMD)
    assert path.read_text() == content
    assert list(tmp_path.iterdir()) == [path]


def test_cli_installs_codex_and_masks_the_key(tmp_path: Path) -> None:
    import tomllib

    path = tmp_path / "config.toml"
    secret = {"RUNLOOP_API_KEY": "rk_live_secret"}
    done = run_cli("codex", "--config-path", str(path), "--env", "RUNLOOP_API_KEY", env=secret)
    assert done.returncode == 0, done.stderr
    assert "rk_live_secret" not in done.stdout + done.stderr
    assert "[mcp_servers.devbox]" in done.stdout and 'default_tools_approval_mode = "approve"' in done.stdout
    written = tomllib.loads(path.read_text())["mcp_servers"]["devbox"]
    assert written["env"] == {"RUNLOOP_API_KEY": "rk_live_secret"} and Path(written["command"]).exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("= nope")
    refused = run_cli("codex", "--config-path", str(bad))
    assert refused.returncode == 2 and "not valid TOML" in refused.stderr
    assert "Traceback" not in refused.stderr
