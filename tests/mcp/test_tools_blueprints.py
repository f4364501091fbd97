"""Blueprint tools and create_devbox's blueprint and repositories, through a real MCP client (both
eras) against the embedded backend."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from mcp import Client
from support.git_server import GitServer
from support.mcp_client import call_error, call_ok, structured, text_of

from mcp_server.local.code_mounts import BASE_URL_ENV
from mcp_server.local.server import RunningBackend
from mcp_server.runloop import NotFound, RunloopClient

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with GitServer(tmp_path_factory.mktemp("git")) as server:
        server.repo("acme", "tool", {"README.md": "main\n"}, branches={"v2": {"README.md": "v2\n"}})
        yield server


async def test_a_failed_build_returns_the_failing_steps_log_and_reports_lines_as_progress(mcp: Client) -> None:
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    dockerfile = "FROM devbox-mcp\nRUN echo first step\nRUN echo checking && echo missing dep >&2 && exit 4\nRUN echo never"
    result = await call_ok(mcp, "create_blueprint", {"name": "mcp-fails", "dockerfile": dockerfile},
                           progress_callback=on_progress)  # fmt: skip
    out = structured(result)
    assert out["id"].startswith("bpt_") and out["status"] == "failed"
    assert out["log"].splitlines() == [
        "step 2/3: line 3: RUN echo checking && echo missing dep >&2 && exit 4", "checking", "missing dep",
        "line 3: RUN echo checking && echo missing dep >&2 && exit 4: exited with status 4",
    ]  # fmt: skip
    assert "first step" not in out["log"]  # only the failing step
    assert "first step" in seen and "checking" in seen  # every line came as progress
    text = text_of(result)
    assert text.startswith(f"blueprint {out['id']} failed (build_failed); the failing step:") and "missing dep" in text


async def test_cancelling_create_blueprint_stops_the_build_and_deletes_it(mcp: Client, backend: RunningBackend) -> None:
    found: list[str] = []
    sleeping = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and message.startswith("blueprint ") and not found:
            found.append(message.split(":")[0].removeprefix("blueprint "))
        if message == "sleeping":
            sleeping.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await mcp.call_tool("create_blueprint", {"name": "mcp-cancelled",
                                    "dockerfile": "FROM devbox-mcp\nRUN echo sleeping; sleep 600"},
                                    progress_callback=on_progress)  # fmt: skip

            tg.start_soon(run)
            await sleeping.wait()
            tg.cancel_scope.cancel()
    blueprint_id = found[0]
    devboxes = backend._server.config.app.state.devboxes
    build = next(d for d in devboxes.all() if d.build_for == blueprint_id)
    async with RunloopClient(backend.base_url, backend.api_key) as client:
        with anyio.fail_after(30):
            while True:
                try:
                    await client.get_blueprint(blueprint_id)
                except NotFound:
                    break
                await anyio.sleep(0.05)
        view = await client.wait_for_devbox_status(build.id, ["shutdown"], timeout_seconds=20)
    assert view.status == "shutdown"


async def test_an_instruction_this_machine_cannot_build_is_named(mcp: Client) -> None:
    out = structured(await call_ok(mcp, "create_blueprint", {"name": "mcp-image", "dockerfile": "FROM node:22\n"}))
    assert out["status"] == "failed" and "line 1: FROM node:22: this machine cannot fetch container images" in out["log"]


async def test_list_blueprints_lists_the_newest_of_a_name(mcp: Client) -> None:
    first = structured(await call_ok(mcp, "create_blueprint", {"name": "mcp-listed", "dockerfile": "FROM x"}))
    listed = structured(await call_ok(mcp, "list_blueprints", {"name": "mcp-listed"}))
    assert set(listed) == {"blueprints"} and not any(line.startswith("more:") for line in listed["blueprints"])
    assert listed["blueprints"][0] == f"{first['id']}  failed  mcp-listed"


async def test_create_devbox_clones_repositories_at_their_ref(
    mcp: Client, git: GitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BASE_URL_ENV, git.url)
    box = structured(await call_ok(mcp, "create_devbox", {"repositories": ["acme/tool@v2"], "network_mode": "none"}))
    try:
        read = await call_ok(mcp, "read_file", {"devbox_id": box["id"], "path": "tool/README.md"})
        assert text_of(read).endswith("v2\n")
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})


async def test_create_devbox_refuses_what_is_not_a_repository_or_a_built_blueprint(mcp: Client) -> None:
    error = await call_error(mcp, "create_devbox", {"repositories": ["https://example.invalid/x"]})
    assert "repositories[0]: give owner/name or owner/name@ref" in error
    error = await call_error(mcp, "create_devbox", {"blueprint": "never-built-blueprint"})
    assert "no blueprint named 'never-built-blueprint' has built successfully" in error


async def test_a_built_blueprint_starts_devboxes_by_name(mcp: Client) -> None:
    name = f"mcp-built-{id(mcp)}"
    out = structured(await call_ok(mcp, "create_blueprint", {"name": name, "dockerfile": "FROM devbox-mcp\nRUN echo ready > /etc/ready"}))
    assert out["status"] == "build_complete" and out["log"] == ""
    box = structured(await call_ok(mcp, "create_devbox", {"blueprint": name}))
    try:
        ran = structured(await call_ok(mcp, "execute", {"devbox_id": box["id"], "command": "cat /etc/ready"}))
        assert ran["stdout"] == "ready\n"
        by_id = structured(await call_ok(mcp, "create_devbox", {"blueprint": out["id"]}))
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": by_id["id"]})
    finally:
        await call_ok(mcp, "shutdown_devbox", {"devbox_id": box["id"]})
    listed = structured(await call_ok(mcp, "list_blueprints", {"name": name}))
    assert listed["blueprints"] == [f"{out['id']}  build_complete  {name}"]
