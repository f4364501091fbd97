"""SSE output streams of executions: replay, live tail, resume by byte offset, UTF-8 boundaries, size."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def devbox(sdk) -> Iterator[str]:
    view = sdk.devboxes.create_and_await_running(name="streams")
    yield view.id
    sdk.devboxes.shutdown(view.id)


def stream_path(devbox: str, execution_id: str, stream: str = "stdout") -> str:
    return f"/v1/devboxes/{devbox}/executions/{execution_id}/stream_{stream}_updates"


def sse_chunks(http: httpx.Client, path: str, **params: Any) -> Iterator[dict[str, Any]]:
    with http.stream("GET", path, params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield json.loads(line[len("data: ") :])


def check_offsets(chunks: list[dict[str, Any]], start: int = 0) -> int:
    """Each chunk's offset is where its bytes start: the previous chunk's offset plus its UTF-8 length."""
    position = start
    for chunk in chunks:
        assert chunk["offset"] == position
        assert "\ufffd" not in chunk["output"], "a multi-byte character was split across chunks"
        position += len(chunk["output"].encode())
    return position


def wait_for_stdout(sdk, devbox: str, execution_id: str, expected: str) -> None:
    """Long-poll-free wait for output: read the live stream until `expected` has appeared."""
    text = ""
    for chunk in sdk.devboxes.executions.stream_stdout_updates(execution_id, devbox_id=devbox):
        text += chunk.output
        if expected in text:
            return
    raise AssertionError(f"{expected!r} never appeared; got {text!r}")


def test_sdk_streams_live_output_to_the_end(sdk, devbox):
    ex = sdk.devboxes.execute_async(devbox, command="for i in $(seq 1 300); do echo \"line $i é😀\"; done; printf 'last words'")
    chunks = list(sdk.devboxes.executions.stream_stdout_updates(ex.execution_id, devbox_id=devbox))
    expected = "".join(f"line {i} é😀\n" for i in range(1, 301)) + "last words"
    assert "".join(c.output for c in chunks) == expected
    check_offsets([{"output": c.output, "offset": c.offset} for c in chunks])
    assert sdk.devboxes.executions.retrieve(ex.execution_id, devbox_id=devbox).status == "completed"


def test_stderr_has_its_own_stream(sdk, devbox):
    ex = sdk.devboxes.execute_async(devbox, command="echo to-out; echo to-err >&2")
    assert "".join(c.output for c in sdk.devboxes.executions.stream_stderr_updates(ex.execution_id, devbox_id=devbox)) == "to-err\n"
    assert "".join(c.output for c in sdk.devboxes.executions.stream_stdout_updates(ex.execution_id, devbox_id=devbox)) == "to-out\n"


def test_reconnect_mid_stream_resumes_at_the_byte_offset(sdk, devbox, http):
    """Live output, a disconnect, more output, a reconnect at `bytes received`: nothing lost or repeated."""
    ex = sdk.devboxes.execute_async(devbox, command="cat", attach_stdin=True)
    pieces = ["first: héllo wörld\n", "second: 😀 ✓ ß\n", "third: 日本語のテキスト\n"]
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text=pieces[0])
    received: list[dict[str, Any]] = []
    for chunk in sse_chunks(http, stream_path(devbox, ex.execution_id)):
        received.append(chunk)
        if "".join(c["output"] for c in received) == pieces[0]:
            break  # closes the connection mid-stream
    resume_at = check_offsets(received)
    assert resume_at == len(pieces[0].encode())
    for piece in pieces[1:]:
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text=piece)
    sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, signal="EOF")
    # Resume through the SDK this time, with the byte count as the offset.
    rest = list(sdk.devboxes.executions.stream_stdout_updates(ex.execution_id, devbox_id=devbox, offset=str(resume_at)))
    check_offsets([{"output": c.output, "offset": c.offset} for c in rest], start=resume_at)
    assert "".join(c["output"] for c in received) + "".join(c.output for c in rest) == "".join(pieces)


def test_reconnect_inside_large_multibyte_output(sdk, devbox, http):
    """Chunks of a few hundred KiB cut through multi-byte characters on disk; the stream never does."""
    line = "ünïcødé 😀 日本 "  # 1-, 2-, 3- and 4-byte characters
    count = 40_000
    ex = sdk.devboxes.execute_async(devbox, command=f"for i in $(seq 1 {count}); do echo \"{line}$i\"; done")
    expected = "".join(f"{line}{i}\n" for i in range(1, count + 1))
    first: list[dict[str, Any]] = []
    for chunk in sse_chunks(http, stream_path(devbox, ex.execution_id)):
        first.append(chunk)
        if len(first) == 2:
            break
    resume_at = check_offsets(first)
    rest = list(sse_chunks(http, stream_path(devbox, ex.execution_id), offset=str(resume_at)))
    check_offsets(rest, start=resume_at)
    assert "".join(c["output"] for c in first + rest) == expected


def test_a_character_written_in_two_parts_is_sent_whole(sdk, devbox, http):
    command = "printf '\\xf0\\x9f'; echo half >&2; read go; printf '\\x98\\x80\\n'"
    ex = sdk.devboxes.execute_async(devbox, command=command, attach_stdin=True)
    with http.stream("GET", stream_path(devbox, ex.execution_id)) as response:
        assert response.status_code == 200
        # The stream is live; let the first half reach the disk before the second is written.
        deadline = time.monotonic() + 20
        while (view := sdk.devboxes.executions.retrieve(ex.execution_id, devbox_id=devbox)).stderr != "half\n":
            assert time.monotonic() < deadline
        assert view.stdout == ""  # the view of a running command also leaves out the half character
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text="go\n")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert events == [{"output": "😀\n", "offset": 0}]


def test_an_offset_inside_a_character_starts_at_the_next_one(sdk, devbox, http):
    done = sdk.devboxes.execute_and_await_completion(devbox, command="printf 'é😀x'")
    path = stream_path(devbox, done.execution_id)
    assert list(sse_chunks(http, path, offset="1")) == [{"output": "😀x", "offset": 2}]
    assert list(sse_chunks(http, path, offset="3")) == [{"output": "x", "offset": 6}]
    assert list(sse_chunks(http, path, offset="7")) == []  # exactly the end: nothing more, the stream ends


def test_invalid_utf8_is_replaced_not_fatal(sdk, devbox, http):
    done = sdk.devboxes.execute_and_await_completion(devbox, command="printf 'a\\xffb\\xc3'")
    chunks = list(sse_chunks(http, stream_path(devbox, done.execution_id)))
    assert "".join(c["output"] for c in chunks) == "a\ufffdb\ufffd"


def test_output_written_just_before_exit_is_not_lost(sdk, devbox):
    for _ in range(5):
        ex = sdk.devboxes.execute_async(devbox, command="seq 1 20000; printf 'the end'")
        text = "".join(c.output for c in sdk.devboxes.executions.stream_stdout_updates(ex.execution_id, devbox_id=devbox))
        assert text == "".join(f"{i}\n" for i in range(1, 20001)) + "the end"


def test_large_output_streams_completely(sdk, devbox, http):
    line = "abcdefghijklmnopqrstuvwxyz0123456789é\n"  # 39 bytes
    lines = 512_820  # about 20 MB
    ex = sdk.devboxes.execute_async(devbox, command=f"yes '{line[:-1]}' | head -n {lines}")
    total, parts = 0, []
    for chunk in sse_chunks(http, stream_path(devbox, ex.execution_id)):
        assert chunk["offset"] == total
        total += len(chunk["output"].encode())
        parts.append(chunk["output"])
    assert total == lines * len(line.encode())
    assert "".join(parts) == line * lines


def test_stream_of_a_killed_command_ends(sdk, devbox, http):
    ex = sdk.devboxes.execute_async(devbox, command="echo started; sleep 600")
    wait_for_stdout(sdk, devbox, ex.execution_id, "started")
    chunks = sse_chunks(http, stream_path(devbox, ex.execution_id))
    assert next(chunks) == {"output": "started\n", "offset": 0}
    sdk.devboxes.executions.kill(ex.execution_id, devbox_id=devbox, kill_process_group=True)
    assert list(chunks) == []  # the stream closes once the execution has completed


@pytest.mark.parametrize(
    ("offset", "message"),
    [("abc", "byte offset"), ("-5", "byte offset"), ("1.5", "byte offset"), ("100", "past the end")],
)
def test_bad_offsets_are_400(sdk, devbox, http, offset, message):
    done = sdk.devboxes.execute_and_await_completion(devbox, command="echo short")
    response = http.get(stream_path(devbox, done.execution_id), params={"offset": offset})
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_streams_of_unknown_ids_are_404(http, devbox):
    assert http.get(stream_path(devbox, "exe_nope")).status_code == 404
    assert http.get(stream_path("dbx_nope", "exe_nope", "stderr")).status_code == 404


def test_a_silent_command_gets_keepalive_comments(sdk, devbox, http, monkeypatch):
    import mcp_server.local.output as output

    monkeypatch.setattr(output, "KEEPALIVE_SECONDS", 0.05)  # the backend runs in this process
    ex = sdk.devboxes.execute_async(devbox, command="cat", attach_stdin=True)
    with http.stream("GET", stream_path(devbox, ex.execution_id)) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line) == ": keep-alive"
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text="after the silence\n")
        data = next(line for line in lines if line.startswith("data: "))
        assert json.loads(data[6:]) == {"output": "after the silence\n", "offset": 0}
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, signal="EOF")
        assert all(not line.startswith("data: ") for line in lines)  # and then the stream ends


def test_live_streams_work_without_inotify(sdk, devbox, http, monkeypatch):
    import mcp_server.local.output as output

    monkeypatch.setattr(output.FileWatcher, "subscribe", lambda self, path, event: False)  # as if inotify failed
    ex = sdk.devboxes.execute_async(devbox, command="cat", attach_stdin=True)
    with http.stream("GET", stream_path(devbox, ex.execution_id)) as response:
        events = (json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: "))
        for n, text in enumerate(["polled 1\n", "polled ✓\n"]):
            sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, text=text)
            assert next(events)["output"] == text, f"piece {n}"
        sdk.devboxes.executions.send_std_in(ex.execution_id, devbox_id=devbox, signal="EOF")
        assert list(events) == []


def _open_fds_to(path) -> int:
    """How many descriptors of this process (the backend runs in a thread of it) point at `path`."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count


def test_a_client_that_goes_away_releases_its_stream(sdk, devbox, http, backend):
    ex = sdk.devboxes.execute_async(devbox, command="echo started; sleep 600")
    stdout = backend.config.data_dir / "devboxes" / devbox / "executions" / ex.execution_id / "stdout"
    try:
        with http.stream("GET", stream_path(devbox, ex.execution_id)) as response:
            lines = response.iter_lines()  # held: dropping the iterator would close the connection
            assert next(line for line in lines if line.startswith("data: "))
            assert _open_fds_to(stdout) == 1  # the stream tails the file while the command is silent
        # The client hung up while the command still runs: the backend must let go of the file.
        deadline = time.monotonic() + 20
        while _open_fds_to(stdout):
            assert time.monotonic() < deadline, "the stream of a departed client kept its file open"
            time.sleep(0.02)
    finally:
        sdk.devboxes.executions.kill(ex.execution_id, devbox_id=devbox, kill_process_group=True)
