"""`devbox-mcp demo` (placeholder until the MCP tools exist): one devbox driven through the HTTP API.

Starts the embedded backend on a loopback port, creates a devbox, runs a command in it,
moves a file in and out, and shuts everything down, printing each step.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from .local.server import start_in_thread


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text}"
        )
    return (
        response.json()
        if response.headers.get("content-type", "").startswith("application/json")
        else response.text
    )


def _run(client: httpx.Client, devbox_id: str, command: str) -> None:
    """Run a command with `execute` (waits up to 20 s), then long-poll until it completes."""
    body = {"command": command, "command_id": str(uuid.uuid4()), "optimistic_timeout": 20}
    result = _check(client.post(f"/v1/devboxes/{devbox_id}/execute", json=body))
    while result.get("status") != "completed":
        result = _check(
            client.post(
                f"/v1/devboxes/{devbox_id}/executions/{result['execution_id']}/wait_for_status",
                json={"statuses": ["completed"], "timeout_seconds": 25},
            )
        )
    print(f"    $ {command}")
    for line in (result.get("stdout") or "").splitlines():
        print(f"    {line}")
    print(f"    exit status {result.get('exit_status')}")


def main() -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the steps below say what happens
    with tempfile.TemporaryDirectory(prefix="devbox-mcp-demo-") as data_dir:
        _step(f"starting the embedded backend (data in {data_dir})")
        backend = start_in_thread(Path(data_dir))
        print(f"    listening on {backend.base_url}")
        headers = {"Authorization": f"Bearer {backend.api_key}"}
        try:
            with httpx.Client(base_url=backend.base_url, headers=headers, timeout=60) as client:
                _step("creating a devbox and waiting until it is running")
                started = time.perf_counter()
                devbox = _check(client.post("/v1/devboxes/create_and_await_running", json={"name": "demo"}))
                print(
                    f"    {devbox['id']} is {devbox['status']} after {(time.perf_counter() - started) * 1000:.0f} ms"
                )
                print(
                    f"    sandbox: {devbox['launch_parameters'].get('sandbox')}, network: {devbox['launch_parameters'].get('network_mode')}"
                )
                if devbox["status"] != "running":
                    print(
                        "    the devbox did not start; see its logs:",
                        _check(client.get(f"/v1/devboxes/{devbox['id']}/logs")),
                    )
                    return 1

                _step("running a command inside it")
                _run(client, devbox["id"], "whoami && uname -sr && echo hello from $(hostname)")

                _step("writing a file and reading it back")
                _check(
                    client.post(
                        f"/v1/devboxes/{devbox['id']}/write_file_contents",
                        json={"file_path": "hello.txt", "contents": "hello, devbox\n"},
                    )
                )
                text = _check(
                    client.post(
                        f"/v1/devboxes/{devbox['id']}/read_file_contents", json={"file_path": "hello.txt"}
                    )
                )
                print(f"    /home/user/hello.txt: {text!r}")

                _step("shutting the devbox down")
                down = _check(client.post(f"/v1/devboxes/{devbox['id']}/shutdown"))
                print(f"    {down['id']} is {down['status']}")
        except (RuntimeError, httpx.HTTPError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
        finally:
            _step("stopping the backend")
            backend.stop()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
