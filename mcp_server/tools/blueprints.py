"""Blueprint tools: build one (waiting, with each build log line as progress) and list them.

A blueprint is a devbox filesystem built once from a dockerfile; `create_devbox(blueprint=...)`
starts devboxes from it. A failed build returns the failing step's log lines (its command, what
it printed, why it failed), which is what a model needs to fix the dockerfile. A build that
outlasts the client's patience is handed back still building; `list_blueprints` shows when it ends.
"""

from __future__ import annotations

import time
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult
from pydantic import BaseModel

from .. import budgets
from ..runloop import BLUEPRINT_FINAL_STATUSES, BlueprintView, RunloopError
from .common import annotations, api_errors, at_most, page_text, result, state

POLL_SECONDS = 1.0  # between looks at a build in progress (the API has no long-poll for builds)
LIST_LIMIT = 50
PROGRESS_LINES = 20  # log lines sent as progress per look at the build
FAILED_STEP_LINES = 40  # of the failing step's log, its last lines


class BlueprintResult(BaseModel):
    id: str
    status: str  # failed: the log's last line says why (build_failed, out_of_memory...)
    log: str  # failed: the failing step's last lines


class BlueprintList(BaseModel):
    # "<id>  <status>  <name>", newest first: lines a model reads at a glance. At most LIST_LIMIT; when
    # there are more, the last line says so (a has_more field would cost every conversation tools/list bytes).
    blueprints: list[str]


def failing_step(lines: list[str]) -> list[str]:
    """The log from the last step's start (`step 3/5: ...`) to the end, at most FAILED_STEP_LINES."""
    start = 0
    for index, line in enumerate(lines):
        if line.startswith("step "):
            start = index
    return lines[start:][-FAILED_STEP_LINES:]


async def create_blueprint(
    ctx: Context,
    name: Annotated[str, at_most(256)],
    dockerfile: Annotated[str, at_most(1_000_000)],
) -> Annotated[CallToolResult, BlueprintResult]:
    """Build a blueprint (dockerfile: FROM devbox-mcp|blueprint; RUN, ENV, ARG, WORKDIR, USER)."""
    app = state(ctx)
    client = app.client
    with api_errors():
        view = await client.create_blueprint({"name": name, "dockerfile": dockerfile})
    seen = 0
    step = 1
    await ctx.report_progress(step, None, f"blueprint {view.id}: {view.status}")
    start = time.monotonic()
    hold = budgets.boot_seconds(ctx, app.settings)
    lines: list[str] = []
    try:
        with api_errors("following the build"):
            while True:
                view = await client.get_blueprint(view.id)
                lines = [line.message for line in (await client.blueprint_logs(view.id)).logs]
                new, seen = lines[seen:], len(lines)
                if len(new) > PROGRESS_LINES:  # a chatty step (apt-get): its latest lines, and how many were left out
                    await ctx.report_progress(step, None, f"({len(new) - PROGRESS_LINES} lines left out)")
                    new = new[-PROGRESS_LINES:]
                for line in new:
                    step += 1
                    await ctx.report_progress(step, None, line[:500])
                if view.status in BLUEPRINT_FINAL_STATUSES or time.monotonic() - start >= hold:
                    break
                await anyio.sleep(POLL_SECONDS)
    except anyio.get_cancelled_exc_class():
        # Nobody waits for it any more: stop the build, as a cancelled execute kills its command.
        with anyio.CancelScope(shield=True), anyio.move_on_after(app.settings.kill_timeout):
            try:
                await client.delete_blueprint(view.id)
            except RunloopError:
                pass
        raise
    return _result(view, lines)


def _result(view: BlueprintView, lines: list[str]) -> CallToolResult:
    failed = view.status == "failed"
    out = BlueprintResult(id=view.id, status=view.status, log="\n".join(failing_step(lines)) if failed else "")
    if failed:
        text = f"blueprint {view.id} failed ({view.failure_reason}); the failing step:\n{out.log}"
    elif view.status == "build_complete":
        text = f"blueprint {view.id} built: create_devbox(blueprint={view.id!r}) starts from it"
    else:
        text = f"blueprint {view.id} is still {view.status}; list_blueprints shows when it is done"
    return result(out, text)


async def list_blueprints(
    ctx: Context, name: Annotated[str | None, at_most(256)] = None
) -> Annotated[CallToolResult, BlueprintList]:
    """List blueprints."""
    with api_errors():
        page = await state(ctx).client.list_blueprints(name=name, limit=LIST_LIMIT)
    lines = [f"{b.id}  {b.status}  {b.name or ''}".rstrip() for b in page.blueprints]
    text = page_text("blueprint", lines, False, None)
    if page.has_more:
        lines.append(f"more: only the newest {LIST_LIMIT} are listed; give a name to see its builds")
        text += "\n" + lines[-1]
    return result(BlueprintList(blueprints=lines), text)


def register(server: MCPServer) -> None:
    server.add_tool(create_blueprint, annotations=annotations())
    server.add_tool(list_blueprints, annotations=annotations(read_only=True))
