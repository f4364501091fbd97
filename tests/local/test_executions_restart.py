"""Executions survive the backend dying: records and output on disk, command_id still idempotent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from runloop_api_client import Runloop
from support.backend_process import free_port

from mcp_server.local.server import start_in_thread


def start_backend_process(data_dir: Path, api_key: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "local-api", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, "DEVBOX_LOCAL_API_KEY": api_key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "the backend process exited at start-up"
        assert time.monotonic() < deadline, "the backend process did not start listening"
        try:
            if httpx.get(base_url + "/healthz", timeout=1).status_code == 200:
                return proc, base_url
        except httpx.TransportError:
            pass


def test_a_backend_crash_loses_no_output_and_keeps_command_ids(tmp_path: Path):
    api_key = "test-key-" + uuid.uuid4().hex
    proc, base_url = start_backend_process(tmp_path, api_key)
    try:
        sdk = Runloop(bearer_token=api_key, base_url=base_url, max_retries=0)
        devbox = sdk.devboxes.create_and_await_running().id
        finished = sdk.devboxes.execute_and_await_completion(devbox, command="echo kept; echo é-err >&2; exit 3")
        command_id = str(uuid.uuid4())
        counted = sdk.devboxes.execute(devbox, command="echo x >> counter", command_id=command_id)
        assert counted.status == "completed"
        running = sdk.devboxes.execute_async(devbox, command="echo partial; cat", attach_stdin=True)
        text = ""
        for chunk in sdk.devboxes.executions.stream_stdout_updates(running.execution_id, devbox_id=devbox):
            text += chunk.output
            if text == "partial\n":
                break
        sdk.close()
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown hooks: records of running commands stay "running"
        proc.wait()

    backend = start_in_thread(tmp_path, api_key)
    try:
        sdk = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0)
        again = sdk.devboxes.executions.retrieve(finished.execution_id, devbox_id=devbox)
        assert (again.status, again.exit_status, again.stdout, again.stderr) == ("completed", 3, "kept\n", "é-err\n")

        died = sdk.devboxes.executions.retrieve(running.execution_id, devbox_id=devbox)
        assert (died.status, died.exit_status, died.stdout) == ("completed", 137, "partial\n")
        assert "backend stopped while this command was running" in died.stderr
        streamed = sdk.devboxes.executions.stream_stdout_updates(running.execution_id, devbox_id=devbox)
        assert "".join(c.output for c in streamed) == "partial\n"

        assert sdk.devboxes.retrieve(devbox).status == "suspended"
        sdk.devboxes.resume(devbox)
        sdk.devboxes.await_running(devbox)
        repeat = sdk.devboxes.execute(devbox, command="echo x >> counter", command_id=command_id)
        assert repeat.execution_id == counted.execution_id
        assert sdk.devboxes.execute_and_await_completion(devbox, command="wc -l < counter").stdout.strip() == "1"
        sdk.close()
    finally:
        backend.stop()


def test_the_journal_survives_a_torn_line_and_keeps_spares_apart(tmp_path: Path):
    from dataclasses import asdict

    from mcp_server.local.executions import JOURNAL, ExecutionRecord, ExecutionStore

    store = ExecutionStore(tmp_path)
    spare = store.take()  # made on the spot: nothing spare yet
    used = store.take()
    record = ExecutionRecord(used, "dbx_x", "echo hi", None, False, "running", None, 1)
    store.append(record)
    record.status, record.exit_status = "completed", 0
    store.append(record)
    (tmp_path / used / "stdout").write_text("hi\n")
    orphan = store.take()
    (tmp_path / orphan / "stdout").write_text("output of a command whose record was never written\n")
    with open(tmp_path / JOURNAL, "a") as f:
        f.write('{"execution_id": "exe_torn", "devb')  # a power cut mid-line

    reloaded = ExecutionStore(tmp_path)
    assert reloaded.load() == [record]
    assert reloaded.spares == [spare]  # the empty directory is reused, the orphan is not
    assert reloaded.take() == spare
    later = ExecutionRecord(spare, "dbx_x", "true", "cmd-1", False, "completed", 0, 2)
    reloaded.append(later)  # lands on a line of its own, not glued to the torn one
    assert ExecutionStore(tmp_path).load() == [record, later]

    for _ in range(100):
        reloaded.append(record)
    assert ExecutionStore(tmp_path).load() == [record, later]
    compacted = (tmp_path / JOURNAL).read_text().splitlines()
    assert compacted == [json.dumps(asdict(r), separators=(",", ":")) for r in (record, later)]


def test_the_journal_keeps_any_command_text(tmp_path: Path):
    """Non-ASCII commands, line separators and a lone surrogate (JSON can carry one) come back as written."""
    from mcp_server.local.executions import ExecutionRecord, ExecutionStore

    store = ExecutionStore(tmp_path)
    records = [
        ExecutionRecord(store.take(), "dbx_x", command, None, False, "completed", 0, 1)
        for command in ("echo début", "printf 'a\u2028b\u0085c'", "echo \ud800 lone")
    ]
    for record in records:
        store.append(record)
    assert sorted(ExecutionStore(tmp_path).load(), key=records.index) == records
