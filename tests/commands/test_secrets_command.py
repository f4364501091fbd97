"""`devbox-mcp secrets`: the embedded backend's secret store from the command line, with a backend running."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from runloop_api_client import Runloop

from mcp_server.local.server import start_in_thread


def secret_value() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def test_the_secrets_command_edits_the_store_a_running_backend_uses(tmp_path: Path) -> None:
    """`devbox-mcp secrets` (the shared backend's key changes every start): a value from
    stdin, never argv; a running backend sees the change at once; nothing prints the value."""
    value, rotated = secret_value(), secret_value()
    env = {k: v for k, v in os.environ.items() if k != "RUNLOOP_API_KEY"}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mcp_server", "secrets", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, env=env)

    running = start_in_thread(tmp_path)
    try:
        with Runloop(bearer_token=running.api_key, base_url=running.base_url) as client:
            made = cli("set", "CLI_TOKEN", stdin=value + "\n")
            assert made.returncode == 0 and "created secret CLI_TOKEN" in made.stderr
            assert value not in made.stdout + made.stderr
            view = client.devboxes.create_and_await_running(secrets={"TOKEN": "CLI_TOKEN"})
            out = client.devboxes.execute_and_await_completion(view.id, command="printenv TOKEN")
            assert out.stdout == f"{value}\n"  # the trailing newline of `echo` is not part of it
            assert cli("set", "CLI_TOKEN", stdin=rotated).returncode == 0
            out = client.devboxes.execute_and_await_completion(view.id, command="printenv TOKEN")
            assert out.stdout == f"{rotated}\n"
            client.secrets.create(name="FROM_API", value="x")  # and the backend's change does not undo the CLI's
            listed = cli("list")
            assert listed.stdout.split() == ["FROM_API", "CLI_TOKEN"]
            assert cli("delete", "CLI_TOKEN").returncode == 0
            assert [s.name for s in client.secrets.list().secrets] == ["FROM_API"]
            missing = cli("delete", "CLI_TOKEN")
            assert missing.returncode == 1 and "CLI_TOKEN" in missing.stderr
            bad = cli("set", "not-a-name", stdin="HIDDEN")
            assert bad.returncode == 1 and "not a valid secret name" in bad.stderr and "HIDDEN" not in bad.stderr
            client.devboxes.shutdown(view.id)
    finally:
        running.stop()
