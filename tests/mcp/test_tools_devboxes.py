"""Devbox and file tools through a real MCP client (both eras) against the embedded backend."""

from __future__ import annotations

import base64
import os

import anyio
import pytest
from mcp import Client
from mcp.types import ImageContent
from support.mcp_client import call_error, call_ok, make_server, structured, text_of

from mcp_server.local.server import RunningBackend
from mcp_server.runloop import RunloopClient
from mcp_server.settings import Settings

pytestmark = pytest.mark.anyio

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def devbox_id(backend: RunningBackend) -> str:
    """One running devbox shared by the file tests (created through the tool)."""

    async def create() -> str:
        async with Client(make_server(backend), mode="auto") as client:
            return structured(await call_ok(client, "create_devbox", {"name": "files"}))["id"]

    return anyio.run(create)


async def test_create_devbox_waits_until_running_and_reports_transitions(mcp: Client) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    env = [{"name": "A", "value": "1"}, {"name": "B_2", "value": "two words"}]
    result = await call_ok(mcp, "create_devbox", {"name": "lifecycle", "environment_variables": env},
                           progress_callback=on_progress)
    box = structured(result)
    assert box["status"] == "running" and box["name"] == "lifecycle"
    messages = [m or "" for _, m in seen]
    assert messages and messages[-1].split(" (")[0].endswith(": running")
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    assert all(box["id"] in m for m in messages)

    got = structured(await call_ok(mcp, "get_devbox", {"devbox_id": box["id"]}))
    assert got["id"] == box["id"] and got["status"] == "running"
    echoed = structured(await call_ok(mcp, "execute", {"devbox_id": box["id"], "command": 'echo "$A|$B_2"'}))
    assert echoed["stdout"] == "1|two words\n"  # the {name, value} list became the environment
    listed = structured(await call_ok(mcp, "list_devboxes", {"status": "running", "limit": 100}))
    assert box["id"] in [d["id"] for d in listed["devboxes"]]

    assert structured(await call_ok(mcp, "suspend_devbox", {"devbox_id": box["id"]}))["status"] in ("suspending", "suspended")
    resumed = structured(await call_ok(mcp, "resume_devbox", {"devbox_id": box["id"]}))
    assert resumed["status"] == "running"
    down = structured(await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]}))
    assert down["status"] == "shutdown"


async def test_cancelling_create_devbox_shuts_the_new_devbox_down(mcp: Client, backend: RunningBackend) -> None:
    created: list[str] = []
    got_id = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and not created:
            created.append(message.split(":")[0].removeprefix("devbox "))
            got_id.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await mcp.call_tool("create_devbox", {"name": "cancelled", "launch_commands": ["sleep 120"]},
                                    progress_callback=on_progress)

            tg.start_soon(run)
            await got_id.wait()
            tg.cancel_scope.cancel()
    async with RunloopClient(backend.base_url, backend.api_key) as client:
        view = await client.wait_for_devbox_status(created[0], ["shutdown"], timeout_seconds=20)
    assert view.status == "shutdown"


async def test_create_devbox_with_network_mode_none(mcp: Client) -> None:
    box = structured(await call_ok(mcp, "create_devbox", {"network_mode": "none"}))
    assert box["network_mode"] == "none"
    await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})


@pytest.mark.skipif(os.geteuid() != 0, reason="root inside a devbox needs a root backend (its own system)")
async def test_create_devbox_run_as_root(mcp: Client) -> None:
    box = structured(await call_ok(mcp, "create_devbox", {"name": "as-root", "run_as_root": True}))
    assert box["status"] == "running"
    assert structured(await call_ok(mcp, "get_devbox", {"devbox_id": box["id"]}))["user"] == "root"
    ran = structured(await call_ok(mcp, "execute", {"devbox_id": box["id"], "command": "whoami; echo $HOME"}))
    assert ran["stdout"] == "root\n/root\n"
    plain = structured(await call_ok(mcp, "create_devbox", {"name": "as-user", "run_as_root": False}))
    ran = structured(await call_ok(mcp, "execute", {"devbox_id": plain["id"], "command": "whoami; sudo -n whoami"}))
    assert ran["stdout"] == "user\nroot\n"
    assert structured(await call_ok(mcp, "get_devbox", {"devbox_id": plain["id"]})).get("user") is None
    for devbox in (box, plain):
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": devbox["id"]})


async def test_devbox_bad_input_gives_clear_errors(mcp: Client) -> None:
    message = await call_error(mcp, "get_devbox", {"devbox_id": "dbx_nope"})
    assert "404" in message and "dbx_nope" in message
    message = await call_error(mcp, "get_devbox", {"devbox_id": "../../etc"})
    assert "devbox_id" in message
    message = await call_error(mcp, "create_devbox", {"network_mode": "bridge"})
    assert "network_mode" in message
    message = await call_error(mcp, "shutdown_devbox", {"devbox_id": "dbx_nope"})
    assert "dbx_nope" in message
    message = await call_error(mcp, "list_devboxes", {"limit": 0})
    assert "limit" in message
    for tool in ("suspend_devbox", "resume_devbox"):
        message = await call_error(mcp, tool, {"devbox_id": "dbx_nope"})
        assert "dbx_nope" in message and "404" in message
    message = await call_error(mcp, "create_devbox", {"environment_variables": {"A": 1}})
    assert "environment_variables" in message
    twice = [{"name": "TOKEN", "value": "s3cret-1"}, {"name": "TOKEN", "value": "s3cret-2"}]
    message = await call_error(mcp, "create_devbox", {"environment_variables": twice})
    assert "environment_variables" in message and "'TOKEN' is given twice" in message
    assert "s3cret" not in message  # values can be secrets: never echoed
    message = await call_error(mcp, "create_devbox", {"environment_variables": [{"name": "BAD-NAME", "value": "x"}]})
    assert "environment_variables" in message and "an environment variable name is letters, digits and" in message
    message = await call_error(mcp, "create_devbox", {"environment_variables": [{"name": "A", "value": "1", "x": 1}]})
    assert "environment_variables" in message and "x" in message


async def test_resuming_a_running_devbox_says_why_it_cannot(mcp: Client, devbox_id: str) -> None:
    message = await call_error(mcp, "resume_devbox", {"devbox_id": devbox_id})
    assert "resume_devbox" in message and "suspended" in message


async def test_write_then_read_text_with_ranges_and_tail(mcp: Client, devbox_id: str) -> None:
    body = "".join(f"line {i}\n" for i in range(1, 101))
    wrote = structured(await call_ok(mcp, "write_file", {"devbox_id": devbox_id, "path": "notes.txt", "contents": body}))
    assert wrote["bytes_written"] == len(body)
    whole = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "notes.txt"})
    assert text_of(whole).endswith(body)
    meta = structured(whole)
    assert meta["kind"] == "text" and meta["total_lines"] == 100 and meta["size_bytes"] == len(body)
    assert meta["text"] == body and meta.get("scanned_bytes") is None  # the structured content has the text too
    part = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "notes.txt", "start_line": 10, "end_line": 12})
    assert text_of(part).endswith("line 10\nline 11\nline 12\n")
    assert structured(part)["start_line"] == 10 and structured(part)["end_line"] == 12
    assert structured(part)["text"] == "line 10\nline 11\nline 12\n"
    tail = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "notes.txt", "tail_lines": 2})
    assert text_of(tail).endswith("line 99\nline 100\n") and structured(tail)["text"] == "line 99\nline 100\n"


async def test_line_numbers_count_newlines_only(mcp: Client, devbox_id: str) -> None:
    body = "one\x0cstill one\u2028and still one\ntwo\r\nthree\n"
    await call_ok(mcp, "write_file", {"devbox_id": devbox_id, "path": "lines.txt", "contents": body})
    second = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "lines.txt", "start_line": 2, "end_line": 2})
    assert structured(second)["total_lines"] == 3
    assert text_of(second).splitlines()[1:] == ["two"]


async def test_tail_of_a_file_larger_than_the_scan_is_refused_not_faked(
    backend: RunningBackend, devbox_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp_server.tools import files

    monkeypatch.setattr(files, "TEXT_SCAN_BYTES", 1024)
    body = "".join(f"line {i}\n" for i in range(1, 2001))
    async with Client(make_server(backend, Settings(binary_cap=1024)), mode="auto") as mcp:
        await call_ok(mcp, "write_file", {"devbox_id": devbox_id, "path": "long.log", "contents": body})
        message = await call_error(mcp, "read_file", {"devbox_id": devbox_id, "path": "long.log", "tail_lines": 5})
        assert "tail -n 5 long.log" in message
        head = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "long.log", "end_line": 2})
        assert text_of(head).splitlines()[1:] == ["line 1", "line 2"]
        assert "only the first 1024 bytes were scanned" in text_of(head) and structured(head)["scanned_bytes"] == 1024


async def test_big_text_file_is_bounded_with_a_line_marker(backend: RunningBackend, devbox_id: str) -> None:

    async with Client(make_server(backend, Settings(output_budget=2048)), mode="auto") as client:
        body = "".join(f"row {i:06d}\n" for i in range(20_000))
        await call_ok(client, "write_file", {"devbox_id": devbox_id, "path": "big.txt", "contents": body})
        result = await call_ok(client, "read_file", {"devbox_id": devbox_id, "path": "big.txt"})
        text = text_of(result)
        assert len(text.encode()) <= 2048 + 200
        assert "row 000000" in text and "row 019999" in text
        assert "read_file start_line=" in text
        assert structured(result)["omitted_bytes"] > 0
        # The structured text is the text's body: same head, marker and tail.
        assert text.split("\n", 1)[1] == structured(result)["text"]


async def test_binary_is_refused_unless_asked_then_image_or_resource(mcp: Client, devbox_id: str, backend: RunningBackend) -> None:
    from mcp_server.runloop import RunloopClient

    async with RunloopClient(backend.base_url, backend.api_key) as client:
        await client.upload_file(devbox_id, "pic.png", PNG)
        await client.upload_file(devbox_id, "blob.bin", bytes(range(256)) * 4)
    message = await call_error(mcp, "read_file", {"devbox_id": devbox_id, "path": "pic.png"})
    assert "image/png" in message and f"{len(PNG)} bytes" in message and "binary: true" in message
    image = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "pic.png", "binary": True})
    meta = structured(image)
    block = image.content[meta["content_index"]]
    assert isinstance(block, ImageContent) and base64.b64decode(block.data) == PNG
    assert meta["kind"] == "image" and meta["mime_type"] == "image/png" and meta.get("text") is None
    blob = await call_ok(mcp, "read_file", {"devbox_id": devbox_id, "path": "blob.bin", "binary": True})
    meta = structured(blob)
    assert meta["kind"] == "binary" and base64.b64decode(meta["base64"]) == bytes(range(256)) * 4
    # No resource block (its URI would name no resource): the text carries the same base64.
    assert len(blob.content) == 1 and text_of(blob).split("\n")[1] == meta["base64"]


async def test_binary_over_the_cap_is_refused(backend: RunningBackend, devbox_id: str) -> None:
    from mcp_server.runloop import RunloopClient

    async with RunloopClient(backend.base_url, backend.api_key) as client:
        await client.upload_file(devbox_id, "large.bin", b"\x00" * 5000)
        await client.upload_file(devbox_id, "large.png", PNG + b"\x00" * 5000)
    async with Client(make_server(backend, Settings(binary_cap=1000)), mode="auto") as client:
        message = await call_error(client, "read_file", {"devbox_id": devbox_id, "path": "large.bin", "binary": True})
        assert "5000 bytes" in message and "1000-byte cap" in message
    # Bytes that reach the model as base64 text fit the output budget, whatever binary_cap allows
    # (an image is shown as an image: binary_cap alone bounds it).
    async with Client(make_server(backend, Settings(binary_cap=10_000, output_budget=4096)), mode="auto") as client:
        message = await call_error(client, "read_file", {"devbox_id": devbox_id, "path": "large.bin", "binary": True})
        assert "5000 bytes" in message and "3072-byte cap" in message
        image = await call_ok(client, "read_file", {"devbox_id": devbox_id, "path": "large.png", "binary": True})
        assert structured(image)["kind"] == "image" and structured(image)["size_bytes"] == len(PNG) + 5000


async def test_file_bad_input_gives_clear_errors(mcp: Client, devbox_id: str) -> None:
    message = await call_error(mcp, "read_file", {"devbox_id": devbox_id, "path": "no/such/file.txt"})
    assert "no/such/file.txt" in message or "not found" in message.lower()
    message = await call_error(mcp, "read_file", {"devbox_id": "dbx_nope", "path": "x"})
    assert "dbx_nope" in message
    message = await call_error(mcp, "read_file", {"devbox_id": devbox_id, "path": "x", "tail_lines": 1, "start_line": 1})
    assert "tail_lines" in message
    await call_ok(mcp, "write_file", {"devbox_id": devbox_id, "path": "short.txt", "contents": "a\nb\n"})
    message = await call_error(mcp, "read_file", {"devbox_id": devbox_id, "path": "short.txt", "start_line": 5})
    assert "past the end" in message and "2 lines" in message
    message = await call_error(mcp, "write_file", {"devbox_id": "dbx_nope", "path": "x", "contents": "y"})
    assert "dbx_nope" in message


async def test_list_devboxes_text_is_one_line_each_and_says_how_to_go_on(mcp: Client, devbox_id: str) -> None:
    # A second running devbox, so a page of one must say how to get the next.
    other = structured(await call_ok(mcp, "create_devbox", {"name": "listed"}))["id"]
    page = await call_ok(mcp, "list_devboxes", {"status": "running", "limit": 1})
    text = text_of(page)
    first = structured(page)["devboxes"][0]
    assert text.splitlines()[:2] == ["1 devbox:", f"{first['id']}  running  {first['name']}"]
    assert text.splitlines()[-1] == f"more: call again with starting_after={first['id']}"
    assert "{" not in text  # the text is one line per devbox, not the JSON again
    assert [d["id"] for d in structured(page)["devboxes"]] == [first["id"]] and structured(page)["has_more"]
    await call_ok(mcp, "shutdown_devbox", {"devbox_id": other})
