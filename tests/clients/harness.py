"""Run a real agent CLI (Claude Code, Codex) against devbox-mcp with a scripted model, offline.

Each run gets a network namespace of its own that has only loopback, so nothing the CLI tries
(telemetry, update checks, plugin syncs) can leave the machine; inside it run the fake model API
(`fake_model.py`) and the CLI, which starts `devbox-mcp serve` over stdio as configured by
`devbox-mcp install` itself. Fresh HOME, config and data directories per run. The result is the
recording of every model request, from which `Run.results` picks what the CLI handed its model
after each planned tool call.

`EXPECTATIONS` names what must reach the model; the per-CLI tests assert each one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients import fake_model
from clients.fake_model import PLAN, STEP_ECHO, STEP_READ, STEP_SEQ, STEP_SQL
from mcp_server.commands.install import devbox_command, install

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
NODE = TOOLS / "node" / "bin" / "node"
CLAUDE = TOOLS / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"
CODEX = TOOLS / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"
FAKE_MODEL = Path(fake_model.__file__)
CLI_TIMEOUT = 150  # seconds for a whole plan; a run takes 5-10 s
PROMPT = "Use the devbox tools: create a devbox, run commands, write and read a file, query an axon."


def netns_unavailable() -> str | None:
    """Why these tests cannot run here (they need root for `ip netns`), or None."""
    if os.geteuid() != 0:
        return "needs root: the agent CLIs run in a loopback-only network namespace (ip netns)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`) for the loopback-only network namespace: apt-get install iproute2"
    return None


def require_installed(*paths: Path) -> None:
    missing = [str(path.relative_to(ROOT)) for path in paths if not path.is_file()]
    if missing:
        raise AssertionError(f"not installed: {', '.join(missing)}; run `make install` (.ci/node-tools)")


@contextlib.contextmanager
def loopback_namespace() -> Iterator[str]:
    """A new network namespace with only `lo` up; on exit, every process left in it is killed."""
    name = f"devbox-mcp-test-{os.getpid()}-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        # A devbox-mcp backend (or a CLI) that outlived its run would keep the namespace alive.
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=True)


def in_namespace(namespace: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


@contextlib.contextmanager
def fake_model_api(namespace: str, record_file: Path, plan: str) -> Iterator[str]:
    """The scripted model, serving in the namespace; yields its base URL (loopback there)."""
    process = subprocess.Popen(
        in_namespace(namespace, [sys.executable, str(FAKE_MODEL), str(record_file), plan]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"fake model did not start (exit {process.poll()})"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


@dataclass
class Run:
    """One CLI run over the whole plan."""

    cli: str
    returncode: int
    stdout: str
    stderr: str
    records: list[dict]
    results: dict[int, Any] = field(init=False)  # plan step -> what the CLI sent the model for that call

    def __post_init__(self) -> None:
        self.results = fake_model.first_results(self.records)

    def seen(self, step: int) -> str:
        """What the model read of a step's result."""
        return fake_model.visible_text(self.results.get(step))

    def explain(self, step: int) -> str:
        return f"{self.cli} handed the model for {PLAN[step].tool} (step {step}):\n{self.seen(step)[:3000]}"


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """A small, explicit environment: what a user's shell would have, minus anything of ours."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{NODE.parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        **extra,
    }


def run_cli(
    namespace: str, argv: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        in_namespace(namespace, argv),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def run_claude_code(tmp: Path, plan: str = "devbox", server: list[str] | None = None) -> Run:
    """`claude -p` with the entry `devbox-mcp install claude-code` writes, passed as --mcp-config.

    `server` replaces devbox-mcp's command (for shapes_server.py, with the `shapes` plan)."""
    require_installed(CLAUDE)
    mcp_config = tmp / "mcp.json"
    install("claude-code", config_path=mcp_config, command=server or devbox_command())
    record = tmp / "requests.jsonl"
    with loopback_namespace() as namespace, fake_model_api(namespace, record, plan) as base_url:
        env = cli_env(
            tmp / "home",
            ANTHROPIC_BASE_URL=base_url,
            ANTHROPIC_API_KEY="sk-ant-fake-key-for-tests",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            DISABLE_AUTOUPDATER="1",
            DISABLE_TELEMETRY="1",
            DISABLE_ERROR_REPORTING="1",
        )
        argv = [
            str(CLAUDE),
            "-p",
            PROMPT,
            "--mcp-config",
            str(mcp_config),
            "--strict-mcp-config",
            "--allowedTools",
            f"mcp__{fake_model.SERVER}",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "claude-sonnet-4-5",
        ]
        done = run_cli(namespace, argv, env, tmp / "work")
    return Run("Claude Code", done.returncode, done.stdout, done.stderr, fake_model.load(str(record)))


CODEX_BASE_CONFIG = """\
# What a user's own config holds; `devbox-mcp install codex` merges its entry below.
model = "gpt-5.5"
model_provider = "fake"
check_for_update_on_startup = false

[model_providers.fake]
name = "scripted model"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "FAKE_MODEL_API_KEY"

[analytics]
enabled = false
"""


def run_codex(tmp: Path, plan: str = "devbox", server: list[str] | None = None) -> Run:
    """`codex exec` (its defaults: approval policy never, read-only sandbox) with the entry
    `devbox-mcp install codex` merges into CODEX_HOME/config.toml; unknown keys are refused."""
    require_installed(NODE, CODEX)
    codex_home = tmp / "codex-home"
    codex_home.mkdir()
    record = tmp / "requests.jsonl"
    with loopback_namespace() as namespace, fake_model_api(namespace, record, plan) as base_url:
        (codex_home / "config.toml").write_text(CODEX_BASE_CONFIG.format(base_url=base_url))
        install("codex", config_path=codex_home / "config.toml", command=server or devbox_command())
        env = cli_env(tmp / "home", CODEX_HOME=str(codex_home), FAKE_MODEL_API_KEY="sk-fake-key-for-tests")
        argv = [str(NODE), str(CODEX), "exec", "--strict-config", "--skip-git-repo-check", "--json", PROMPT]
        done = run_cli(namespace, argv, env, tmp / "work")
    return Run("Codex", done.returncode, done.stdout, done.stderr, fake_model.load(str(record)))


# ---------------------------------------------------------------- what must reach the model

NL = r"(?:\n|\\n|\r\n)"  # a line break, raw or JSON-escaped


@dataclass(frozen=True)
class Expectation:
    name: str
    step: int
    patterns: tuple[str, ...]  # each must match what the model saw of the step's result

    def missing(self, run: Run) -> list[str]:
        seen = run.seen(self.step)
        return [pattern for pattern in self.patterns if not re.search(pattern, seen)]


# The patterns match output, never the command or arguments that produced it.
EXPECTATIONS = [
    Expectation("stdout", STEP_ECHO, (rf"line1{NL}line2{NL}line3",)),
    Expectation("stderr", STEP_ECHO, (r"err1(?! >&2)",)),
    Expectation("exit_status", STEP_ECHO, (r"exit[_ ]status\W{0,4}3\b",)),
    Expectation("big_output_tail", STEP_SEQ, (rf"199999{NL}200000",)),
    Expectation("file_text", STEP_READ, (rf"alpha-file-text{NL}beta-file-text",)),
    Expectation("sql_rows", STEP_SQL, (r"GREETING", r"\b42\b")),
]


def failed_calls(run: Run) -> dict[int, str]:
    """Plan steps whose call did not reach the tool or failed there, with what the model was told."""
    failures: dict[int, str] = {}
    for step in range(len(PLAN)):
        result = run.results.get(step)
        text = run.seen(step)
        if result is None:
            failures[step] = "no result reached the model"
        elif result.get("is_error") or re.search(
            r"requires approval|Error executing tool|unsupported call", text
        ):
            failures[step] = text[:500]
    return failures


def final_text(run: Run) -> str | None:
    """The CLI's last assistant text, from its JSON event stream (both print one event per line)."""
    last = None
    for line in run.stdout.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("type") == "result":  # Claude Code
                last = event.get("result")
            item = event.get("item") or {}
            if item.get("type") == "agent_message":  # Codex
                last = item.get("text")
    return last
