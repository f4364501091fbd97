"""Running commands: `execute`, `stream_logs`, `send_stdin`, `kill_execution`.

`execute` starts the command through the idempotent execute endpoint (a retried call with the
same `command_id` attaches to the same execution instead of running it again), which holds the
request while the command runs (`start_execution`: until it prints on the embedded backend, a
short window on Runloop's): a command done by then comes back with its exit status and whole
output in that one answer, one API request. The embedded backend sends the command's first
output on that request as soon as it prints, shown as progress at once (`ShownEarly`). Otherwise
the call reads both output streams, from where the answer's output ends when it carried the
output so far (the embedded backend's does). Every chunk feeds the progress notifications; the
streams end when the command has exited and all its output was sent, so nothing printed just
before exit is lost.
If the wait budget ends first, the call hands off: the command keeps running and the result
says where to continue with `stream_logs` (byte offsets counted from what was received).
If the client cancels the call, the command is killed in the devbox (its process group).

Results: the structured content is the whole result (ids, status, exit, offsets, and the shaped
stdout and stderr as strings); the text renders it for a model (a status line, then each
stream). Both carry the same shaped output, cut at the same points with the same markers:
clients hand their model one or the other.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from ..budgets import wait_seconds as wait_budget
from ..progress import OutputProgress, output_progress
from ..runloop import ExecutionView, RunloopClient, RunloopError, new_command_id
from ..settings import Settings
from ..shaping import OutputBuffer, Shaped, stream_hint
from .common import AppState, DevboxId, ExecutionId, Id, annotations, api_errors, at_most, result, state

STREAMS: tuple[Literal["stdout"], Literal["stderr"]] = ("stdout", "stderr")
MAX_MATCHES = 20
MATCH_CHARS = 500  # of each matching line returned
PARTIAL_KEEP = 64 * 1024  # characters of an unfinished line searched for `until`
# Lines of each stream an execute answer is asked to carry. A stream with more (or, on the embedded
# backend, more than 1 MiB) comes back cut (`*_truncated`) and is read from the stream instead.
FAST_LAST_N = 10_000
CLOUD_FAST_WINDOW = 0.1  # s: Runloop's API holds whole seconds; `start_execution` attaches after this
MAX_HOLD = 25  # s: the execute endpoint's longest hold

class OutputEnvelope(BaseModel):
    devbox_id: str
    execution_id: str
    status: Literal["queued", "running", "completed"]
    exit_status: int | None = None
    output_complete: bool  # all output read
    stdout: str  # cleaned; a marker replaces an omitted middle (so in stderr)
    stderr: str
    stdout_offset: int  # stream_logs continues here
    stderr_offset: int
    omitted_bytes: int  # left out of stdout and stderr
    hint: str | None = None


class ExecuteResult(OutputEnvelope):
    command_id: str | None  # retry with it: never runs twice
    duration_seconds: float


class LogsResult(OutputEnvelope):
    stopped_because: Literal["completed", "matched", "wait_ended"]
    matches: list[str] = Field(default_factory=list)  # lines matching until (≤ 20)


class ExecutionState(BaseModel):
    devbox_id: str
    execution_id: str
    status: str
    exit_status: int | None = None


class StdinResult(BaseModel):
    execution_id: str
    success: bool


@dataclass
class StreamsRead:
    """What reading an execution's two output streams produced."""

    offsets: dict[str, int]
    start: dict[str, int]
    buffers: dict[str, OutputBuffer]
    ended: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(STREAMS, False))
    matches: list[str] = field(default_factory=list)
    followed: bool = False  # a stream was opened: time passed since the execute answer

    @property
    def complete(self) -> bool:
        return all(self.ended.values())

    def seed(self, view: ExecutionView) -> dict[str, str]:
        """Take the output an execute answer carries where it is whole; returns what was taken.

        A completed view's stream is whole unless its `*_truncated` flag is set (the SDK reads it
        the same way); that stream ends here. A running view's text (the embedded backend sends
        the output so far, up to its last whole character) is whole when not truncated and
        valid UTF-8, and its byte length is where the stream continues: nothing lost or repeated.
        """
        taken: dict[str, str] = {}
        for s in STREAMS:
            text: str | None = getattr(view, s)
            if text is None or getattr(view, f"{s}_truncated") or self.offsets[s] != self.start[s]:
                continue
            if not view.completed and (getattr(view, f"{s}_truncated") is None or "\ufffd" in text):
                continue
            self.buffers[s].add(text)
            self.offsets[s] += len(text.encode("utf-8"))
            self.ended[s] = view.completed
            taken[s] = text
        return taken


class ShownEarly:
    """Output of a running command shown as progress from the execute answer's early views (sent
    as soon as it prints, while the request is held on), so what follows is shown from there.

    Only a stream's whole text is taken (not cut, valid UTF-8): it is then the exact start of
    the stream, which the answer and the streams repeat, and `unseen` skips.
    """

    def __init__(self) -> None:
        self.text = dict.fromkeys(STREAMS, "")
        self._skip = dict.fromkeys(STREAMS, 0)

    @property
    def bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.text.values())

    def take(self, view: ExecutionView) -> list[str]:
        """The text of `view` not shown yet, now counted as shown."""
        new = []
        for s in STREAMS:
            text: str | None = getattr(view, s)
            if text is None or getattr(view, f"{s}_truncated") is not False or "\ufffd" in text:
                continue
            if text.startswith(self.text[s]) and len(text) > len(self.text[s]):
                new.append(text[len(self.text[s]) :])
                self._skip[s] += len(text) - len(self.text[s])
                self.text[s] = text
        return new

    def unseen(self, stream: str, text: str) -> str:
        """`text`, the next piece of `stream` from its start, without what was shown already."""
        skip = min(self._skip[stream], len(text))
        self._skip[stream] -= skip
        return text[skip:]


class _LineMatcher:
    """Finds lines matching `until` across chunk boundaries (a partial last line is checked too).

    Bounded: a line without a newline is searched in its last `PARTIAL_KEEP` characters only, and
    a matching line is returned as at most `MATCH_CHARS` characters around the match (the result
    carries it in its text and its structured content; a minified bundle must not flood either).
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.partial = {s: "" for s in STREAMS}

    def feed(self, stream: str, text: str) -> list[str]:
        data = self.partial[stream] + text
        *lines, rest = data.split("\n")
        rest = rest[-PARTIAL_KEEP:]
        self.partial[stream] = rest
        found = [hit for line in lines if (hit := self._hit(line)) is not None]
        if not found and rest and (hit := self._hit(rest)) is not None:
            found.append(hit)
        return found

    def _hit(self, line: str) -> str | None:
        match = self.pattern.search(line)
        if match is None:
            return None
        if len(line) <= MATCH_CHARS:
            return line
        start = max(0, min(match.start() - MATCH_CHARS // 4, len(line) - MATCH_CHARS))
        end = start + MATCH_CHARS
        return ("…" if start else "") + line[start:end] + ("…" if end < len(line) else "")


async def read_streams(
    ctx: Context,
    app: AppState,
    devbox_id: str,
    execution_id: str,
    *,
    stdout_offset: int = 0,
    stderr_offset: int = 0,
    wait: float,
    until: re.Pattern[str] | None = None,
    seed: ExecutionView | None = None,
    shown: ShownEarly | None = None,
) -> StreamsRead:
    """Read both streams from the given offsets until they end, `until` matches, or `wait` passes.

    With `seed` (the execute answer), the output it carries whole is taken from it (shown as
    progress when the command still runs) and only the rest is read from the streams.
    """
    keep = max(app.settings.output_budget, 1024)
    start = {"stdout": stdout_offset, "stderr": stderr_offset}
    output = StreamsRead(offsets=dict(start), start=dict(start), buffers={s: OutputBuffer(keep) for s in STREAMS})
    seeded = output.seed(seed) if seed is not None else {}
    if output.complete or wait <= 0:
        return output  # the answer held everything (or there is no time left): no stream to open
    matcher = _LineMatcher(until) if until else None
    errors: list[RunloopError] = []
    shown = shown or ShownEarly()

    async with output_progress(
        _reporter(ctx),
        interval=app.settings.progress_interval,
        max_bytes=app.settings.progress_message_bytes,
        start_bytes=stdout_offset + stderr_offset + shown.bytes,
    ) as progress:
        output.followed = True
        for s, text in seeded.items():
            progress.feed(shown.unseen(s, text))
        if seeded:
            await progress.flush()  # the first lines go out before the streams are opened
        with anyio.move_on_after(wait):
            async with anyio.create_task_group() as tg:

                async def pump(stream: Literal["stdout", "stderr"]) -> None:
                    # aclosing, as resources/feeds do: however the loop is left, the SSE connection
                    # is closed here, not when the generator happens to be finalized.
                    chunks = app.client.stream_output(devbox_id, execution_id, stream, offset=output.offsets[stream])
                    try:
                        async with aclosing(chunks):
                            async for chunk in chunks:
                                # No await between receiving a chunk and recording it: a cancel
                                # here never loses a chunk that the offsets already count.
                                output.buffers[stream].add(chunk.text)
                                output.offsets[stream] = chunk.offset
                                progress.feed(shown.unseen(stream, chunk.text))
                                if matcher is not None and len(output.matches) < MAX_MATCHES:
                                    found = matcher.feed(stream, chunk.text)
                                    if found:
                                        output.matches.extend(found[: MAX_MATCHES - len(output.matches)])
                                        tg.cancel_scope.cancel()
                        output.ended[stream] = True
                    except RunloopError as exc:
                        errors.append(exc)
                        tg.cancel_scope.cancel()

                for stream in STREAMS:
                    if not output.ended[stream]:
                        tg.start_soon(pump, stream)
    if errors:
        raise ToolError(f"reading the output of execution {execution_id} failed: {errors[0]}")
    return output


def _show_early(ctx: Context, app: AppState, shown: ShownEarly) -> Callable[[ExecutionView], Awaitable[None]]:
    """What shows a running command's output from the execute answer's early views, at once."""
    progress = OutputProgress(_reporter(ctx), max_bytes=app.settings.progress_message_bytes)

    async def show(running: ExecutionView) -> None:
        for text in shown.take(running):
            progress.feed(text)
        await progress.flush()

    return show


def _reporter(ctx: Context):  # noqa: ANN202 - a `progress.Report`
    async def report(progress: float, message: str) -> None:
        await ctx.report_progress(progress, None, message)

    return report


def split_budget(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Share the text budget between stdout and stderr: each gets half, and what one does not
    need goes to the other."""
    half = budget // 2
    alloc = {s: min(n, half) for s, n in sizes.items()}
    spare = budget - sum(alloc.values())
    for s in STREAMS:
        extra = min(spare, sizes[s] - alloc[s])
        alloc[s] += extra
        spare -= extra
    return {s: max(a, 256) for s, a in alloc.items()}


def shape_streams(output: StreamsRead, settings: Settings) -> dict[str, Shaped]:
    sizes = {s: output.buffers[s].total for s in STREAMS}
    budgets = split_budget(sizes, settings.output_budget)
    return {
        s: output.buffers[s].shaped(
            budgets[s], base_offset=output.start[s], label=s, hint=stream_hint(f"{s}_offset")
        )
        for s in STREAMS
    }


def render_output(shaped: dict[str, Shaped]) -> str:
    parts = []
    for s in STREAMS:
        if shaped[s].total_bytes:
            text = shaped[s].text
            parts.append(f"--- {s} ---\n{text}{'' if text.endswith(chr(10)) else chr(10)}")
    return "".join(parts) if parts else "(no output)\n"


def continue_hint(devbox_id: str, execution_id: str, output: StreamsRead) -> str:
    return (
        f"continue with stream_logs devbox_id={devbox_id} execution_id={execution_id} "
        f"stdout_offset={output.offsets['stdout']} stderr_offset={output.offsets['stderr']}"
        " (or stop it with kill_execution)"
    )


def fast_window(app: AppState, wait: float) -> float:
    """How long the execute request may wait for the command (see `Settings.fast_window`)."""
    if app.settings.fast_window is not None:
        window = app.settings.fast_window
    else:
        window = MAX_HOLD if app.client.subsecond_waits else CLOUD_FAST_WINDOW
    return min(window, wait, MAX_HOLD)


async def start_execution(
    client: RunloopClient, devbox_id: str, command: str, command_id: str, window: float, output_grace: float,
    on_output: Callable[[ExecutionView], Awaitable[None]] | None = None,
) -> ExecutionView:
    """Start the command and wait up to `window` s for it to complete, in as few requests as that allows.

    - The embedded backend (`subsecond_waits`) holds the execute request up to `window` s, and
      answers early once the command has printed and `output_grace` s more passed (our
      extensions): a silent command is awaited, a talkative one's first line shows at once, and
      either way a command done by then costs this one request. The answer comes as lines
      (our extension too): the command's first output reaches `on_output` as it prints, not
      after the grace.
    - Runloop's API holds whole seconds. The execute request asks for the next whole second;
      if no answer came within `window`, a second execute with the same `command_id` and no hold
      attaches to the same execution (never a second run) and returns at once, so a longer
      command's output is followed after `window`, not a second. Whichever answers first wins;
      the other request is abandoned (the command is not affected). A command done within
      `window` thus costs one request there too.
    - `window` 0: no hold and no output in the answer (the command's output is streamed).
    """
    if window <= 0:
        return await client.execute(devbox_id, command, command_id=command_id, optimistic_timeout=0)
    if client.subsecond_waits:
        return await client.execute(
            devbox_id, command, command_id=command_id, optimistic_timeout=window, last_n=FAST_LAST_N,
            output_grace=output_grace, on_output=on_output,
        )
    hold = min(MAX_HOLD, max(1, math.ceil(window)))
    if hold == window:
        return await client.execute(devbox_id, command, command_id=command_id, optimistic_timeout=hold, last_n=FAST_LAST_N)
    answers: list[ExecutionView] = []
    errors: list[RunloopError] = []
    async with anyio.create_task_group() as tg:

        async def ask(after: float, seconds: float) -> None:
            await anyio.sleep(after)
            try:
                view = await client.execute(
                    devbox_id, command, command_id=command_id, optimistic_timeout=seconds, last_n=FAST_LAST_N
                )
            except RunloopError as exc:
                errors.append(exc)
            else:
                answers.append(view)
            tg.cancel_scope.cancel()

        tg.start_soon(ask, 0, hold)
        tg.start_soon(ask, window, 0)
    if answers:
        return answers[0]
    raise errors[0]


async def final_state(client: RunloopClient, devbox_id: str, execution_id: str, complete: bool) -> ExecutionView:
    """The execution's status and exit code. After the streams ended it is (about to be) completed."""
    if complete:
        return await client.wait_for_execution(devbox_id, execution_id, statuses=("completed",), timeout_seconds=30)
    return await client.get_execution(devbox_id, execution_id)


async def execute(
    ctx: Context,
    devbox_id: DevboxId,
    command: Annotated[str, Field(min_length=1, description="shell command (bash -c)"), at_most(100_000)],
    wait_seconds: Annotated[
        float | None,
        Field(ge=0, le=3600, description="before handing off to stream_logs (default 50)"),
    ] = None,
    command_id: Annotated[
        Id | None,
        Field(description="a retry with it never runs twice"),
        at_most(100),
    ] = None,
    attach_stdin: Annotated[bool, Field(description="keep stdin open for send_stdin (no dedupe)")] = False,
) -> Annotated[CallToolResult, ExecuteResult]:
    """Run a shell command in a devbox; output streams as progress. Returns exit status, stdout,
    stderr; or, still running after wait_seconds, stream_logs offsets (it runs on). Cancel kills it."""
    app = state(ctx)
    if attach_stdin and command_id is not None:
        raise ToolError("command_id cannot be used with attach_stdin: such a command is started without dedupe")
    wait = wait_budget(ctx, app.settings, wait_seconds)
    cid = None if attach_stdin else command_id or new_command_id()
    window = fast_window(app, wait)
    shown = None
    started = time.monotonic()
    execution_id: str | None = None
    try:
        with api_errors():
            if attach_stdin:
                # The idempotent endpoint has no stdin option; this call is sent once.
                view = await app.client.execute_async(devbox_id, command, attach_stdin=True)
            else:
                assert cid is not None
                shown = ShownEarly()
                view = await start_execution(
                    app.client, devbox_id, command, cid, window, app.settings.output_grace,
                    on_output=_show_early(ctx, app, shown),
                )
        execution_id = view.execution_id
        # The budget counts from the call's start: starting the command took part of it.
        output = await read_streams(
            ctx, app, devbox_id, execution_id, wait=max(0.0, wait - (time.monotonic() - started)),
            seed=view if window > 0 else None, shown=shown,
        )
        if view.completed or not output.followed:
            final = view  # its exit status is known, or nothing was awaited since it came: no further request
        else:
            with api_errors():
                final = await final_state(app.client, devbox_id, execution_id, output.complete)
    except anyio.get_cancelled_exc_class():
        if execution_id is not None or cid is not None:
            await _kill_cancelled(app, devbox_id, command, cid, execution_id)
        raise
    duration = time.monotonic() - started
    return _execute_result(ctx, app, devbox_id, execution_id, cid, output, final, duration, wait)


async def stream_logs(
    ctx: Context,
    devbox_id: DevboxId,
    execution_id: ExecutionId,
    stdout_offset: Annotated[int, Field(ge=0)] = 0,
    stderr_offset: Annotated[int, Field(ge=0)] = 0,
    wait_seconds: Annotated[
        float | None, Field(ge=0, le=3600, description="how long to follow (default 50)")
    ] = None,
    until: Annotated[
        str | None,
        Field(min_length=1, description="regex: return when a line matches"), at_most(1000),
    ] = None,
) -> Annotated[CallToolResult, LogsResult]:
    """Follow a running command's output from offsets (live as progress) until it completes,
    `until` matches a line, or wait_seconds pass; returns the offsets to continue from."""
    app = state(ctx)
    pattern = None
    if until is not None:
        try:
            pattern = re.compile(until)
        except re.error as exc:
            raise ToolError(f"until is not a valid regular expression: {exc}") from None
    wait = wait_budget(ctx, app.settings, wait_seconds)
    output = await read_streams(
        ctx, app, devbox_id, execution_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset,
        wait=wait, until=pattern,
    )
    with api_errors():
        final = await final_state(app.client, devbox_id, execution_id, output.complete)
    shaped = shape_streams(output, app.settings)
    reason: Literal["completed", "matched", "wait_ended"] = (
        "matched" if output.matches else "completed" if output.complete else "wait_ended"
    )
    hint = killed_hint(final) if output.complete else continue_hint(devbox_id, execution_id, output)
    envelope = LogsResult(
        **_envelope_fields(devbox_id, execution_id, output, final, shaped),
        hint=hint,
        stopped_because=reason,
        matches=output.matches,
    )
    if reason == "matched":
        head = f"matched {until!r} ({len(output.matches)} line(s)); the command is {final.status}"
    elif reason == "completed":
        head = f"completed: exit {final.exit_status}"
    else:
        head = f"no end after {wait:g} s; the command is {final.status}"
    lines = [f"{head} · execution {execution_id}"]
    if output.matches:
        lines.append("matching lines:\n" + "\n".join(output.matches))
    if hint:
        lines.append(hint)
    res = result(envelope, "\n".join(lines) + "\n" + render_output(shaped))
    return _with_links(ctx, res, devbox_id, execution_id, shaped)


async def kill_execution(ctx: Context, devbox_id: DevboxId, execution_id: ExecutionId) -> ExecutionState:
    """Kill a running command and its whole process group."""
    with api_errors():
        view = await state(ctx).client.kill_execution(devbox_id, execution_id, kill_process_group=True)
    return ExecutionState(
        devbox_id=devbox_id, execution_id=execution_id, status=view.status, exit_status=view.exit_status
    )


async def send_stdin(
    ctx: Context,
    devbox_id: DevboxId,
    execution_id: ExecutionId,
    text: Annotated[str | None, Field(min_length=1, description="text to write"), at_most(100_000)] = None,
    signal: Annotated[
        Literal["EOF", "INTERRUPT"] | None, Field(description="EOF closes stdin; INTERRUPT sends Ctrl-C")
    ] = None,
) -> StdinResult:
    """Write text (or EOF / INTERRUPT) to a running command's stdin."""
    with api_errors():  # the client refuses neither or both of text and signal, before sending
        sent = await state(ctx).client.send_stdin(devbox_id, execution_id, text=text, signal=signal)
    return StdinResult(execution_id=execution_id, success=sent.success)


def register(server: MCPServer) -> None:
    # A command can do anything (rm -rf, network calls): destructive and open-world, truthfully.
    server.add_tool(execute, annotations=annotations(destructive=True, open_world=True))
    server.add_tool(stream_logs, annotations=annotations(read_only=True, idempotent=True))
    server.add_tool(kill_execution, annotations=annotations(destructive=True, idempotent=True))
    server.add_tool(send_stdin, annotations=annotations(destructive=True, open_world=True))


async def _kill_cancelled(
    app: AppState, devbox_id: str, command: str, command_id: str | None, execution_id: str | None
) -> None:
    """The caller cancelled: kill the command so it leaves no orphan.

    If the cancel came while the execute request was in flight, the execution id is unknown;
    asking again with the same command_id returns the same execution (never a second run).
    """
    with anyio.CancelScope(shield=True), anyio.move_on_after(app.settings.kill_timeout):
        if execution_id is None:
            try:
                view = await app.client.execute(devbox_id, command, command_id=command_id, optimistic_timeout=0)
            except RunloopError:
                return
            execution_id = view.execution_id
        try:
            await app.client.kill_execution(devbox_id, execution_id, kill_process_group=True)
        except RunloopError:
            pass  # already finished, or the devbox is gone: nothing left to kill


def _envelope_fields(
    devbox_id: str, execution_id: str, output: StreamsRead, final: ExecutionView, shaped: dict[str, Shaped]
) -> dict[str, object]:
    return {
        "devbox_id": devbox_id,
        "execution_id": execution_id,
        "status": final.status if final.status in ("queued", "running", "completed") else "running",
        "exit_status": final.exit_status if final.status == "completed" else None,
        "output_complete": output.complete,
        "stdout": shaped["stdout"].text,
        "stderr": shaped["stderr"].text,
        "stdout_offset": output.offsets["stdout"],
        "stderr_offset": output.offsets["stderr"],
        "omitted_bytes": sum(s.omitted_bytes for s in shaped.values()),
    }


def killed_hint(final: ExecutionView) -> str | None:
    """One line on why a command ended 137 (SIGKILL): out of memory when the backend says so."""
    if final.status != "completed" or final.exit_status != 137:
        return None
    if final.killed_for == "out_of_memory":
        return "killed: out of memory at the devbox's limit; retry in a devbox with a larger resource_size"
    return "exit 137: killed (SIGKILL) by kill_execution, a shutdown, or for memory (get_devbox shows the size)"


def _execute_result(
    ctx: Context, app: AppState, devbox_id: str, execution_id: str, command_id: str | None, output: StreamsRead, final: ExecutionView, duration: float,
    wait: float,
) -> CallToolResult:
    shaped = shape_streams(output, app.settings)
    fields = _envelope_fields(devbox_id, execution_id, output, final, shaped)
    if output.complete:
        hint = killed_hint(final)
        head = f"exit {final.exit_status} · {duration:.2f} s · execution {execution_id}" + (f"\n{hint}" if hint else "")
    else:
        hint = continue_hint(devbox_id, execution_id, output)
        if final.status == "completed":
            state_line = f"exit {final.exit_status}, but not all output was read within {wait:g} s"
        else:
            state_line = f"still {final.status} after {wait:g} s; the command keeps running"
        head = f"{state_line} · execution {execution_id}\n{hint}"
    envelope = ExecuteResult(**fields, hint=hint, command_id=command_id, duration_seconds=round(duration, 3))
    return _with_links(ctx, result(envelope, head + "\n" + render_output(shaped)), devbox_id, execution_id, shaped)


def _with_links(
    ctx: Context, res: CallToolResult, devbox_id: str, execution_id: str, shaped: dict[str, Shaped]
) -> CallToolResult:
    """Add links to the full output resources of the streams the result had to cut, for a client
    that can use them (the text and structured content say how to read the rest either way)."""
    cut = [s for s in STREAMS if shaped[s].truncated]
    res.content.extend(state(ctx).resources.output_links(ctx.session, devbox_id, execution_id, cut))
    return res
