"""Executions: commands run in a devbox's sandbox, their records, processes and output files.

On disk, under `<devbox state_dir>/executions/`: one directory per execution holding the
`stdout` and `stderr` files the command writes into directly, and `journal.jsonl`, where each
change of an execution's record (status, exit status, command, command_id, times) is appended
as one JSON line; the last line of an execution wins. The backend never pipes output through
itself: a command's output costs it no memory, a background `cmd &` that keeps the files open
cannot hold the execution open (it completes when its shell exits), and a restart of the
backend loses nothing already written.

Creating a file costs 0.2-0.8 ms on ext4 here, appending a line a few microseconds, so nothing
is created while a command starts: the journal only grows, and each devbox keeps a few spare
execution directories (output files included) made ahead of time in a worker thread.

Exit statuses the backend assigns (a command killed by signal N reports 128 + N, as a shell does):
- `kill`: 137 (SIGKILL), or 143 when the command exits on the SIGTERM of `kill_process_group`.
- The devbox shut down or suspended while the command ran: 137.
- The backend stopped or crashed while the command ran (the sandbox dies with it): 137, and
  a line saying so is appended to stderr when the backend next loads the devbox.
- The kernel killed it for want of memory (the devbox's size): 137, and a line saying so is
  appended to stderr (`oom_note`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
from collections.abc import Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from . import childwatch
from .clock import now_ms
from .errors import ApiError, disk_full, is_disk_full, not_found
from .http import IdempotencyCache
from .ids import new_id
from .output import POLL_SECONDS, FileWatcher, OutputSource, tail_lines
from .sse import wait_or_timeout

if TYPE_CHECKING:
    from .devboxes import Devbox, DevboxManager
    from .sandbox import SandboxUser

log = logging.getLogger("devbox_mcp.local")

STATUSES: tuple[str, ...] = ("queued", "running", "completed")
Stream = Literal["stdout", "stderr"]

EXIT_KILLED = 128 + signal.SIGKILL
KILL_GRACE_SECONDS = 2.0  # between the SIGTERM and the SIGKILL of `kill_process_group`
STOP_WAIT_SECONDS = 5.0  # how long a stopping devbox waits for its killed commands to be reaped
VIEW_MAX_BYTES = 1024 * 1024  # per stream in an execution view, whatever `last_n` asks for
SYNC_MAX_BYTES = 4 * 1024 * 1024  # per stream in an `execute_sync` answer (the tail)
STDIN_MAX_PENDING = 1024 * 1024  # unread stdin bytes accepted before `send_std_in` refuses more
RESTART_NOTE = "\n[devbox-mcp] the backend stopped while this command was running, which killed it (exit status 137)\n"


def oom_note(memory_gib: int) -> str:
    return (
        f"\n[devbox-mcp] killed (exit status 137): out of memory, the devbox's limit is {memory_gib} GiB; "
        "create a devbox with a larger resource_size\n"
    )


@dataclass
class ExecutionRecord:
    """What survives a restart: one line of the journal."""

    execution_id: str
    devbox_id: str
    command: str
    command_id: str | None
    attach_stdin: bool
    status: str
    exit_status: int | None
    create_time_ms: int
    end_time_ms: int | None = None
    killed_for: str | None = None  # "out_of_memory": the kernel OOM-killed in its devbox as it ended 137


@dataclass(eq=False)
class Execution:
    record: ExecutionRecord
    directory: Path
    process: asyncio.subprocess.Process | None = None
    stdin_closed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: set[asyncio.Event] = field(default_factory=set)  # live output streams to wake on completion
    oom_kills_before: int = 0  # the devbox's OOM kill count when the command started

    @property
    def id(self) -> str:
        return self.record.execution_id

    @property
    def finished(self) -> bool:
        return self.record.status == "completed"

    def path(self, stream: Stream) -> Path:
        return self.directory / stream

    def source(self, stream: Stream) -> OutputSource:
        return OutputSource(self.path(stream), lambda: self.finished, self.waiters)


JOURNAL = "journal.jsonl"
SPARE_DIRS = 4  # execution directories kept ready per devbox


def _make_spare(root: Path) -> str:
    """A new execution id with its directory and empty output files."""
    execution_id = new_id("exe")
    directory = root / execution_id
    directory.mkdir(parents=True, mode=0o700)
    for stream in ("stdout", "stderr"):
        os.close(os.open(directory / stream, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    return execution_id


def _journal_line(record: ExecutionRecord) -> bytes:
    """A record as one journal line. orjson takes 0.2 µs where asdict + json take 14, on every
    start and end of a command; a text it refuses (a lone surrogate in the command) goes through
    the json module, which escapes it."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return (json.dumps(asdict(record), separators=(",", ":")) + "\n").encode()


class ExecutionStore:
    """One devbox's executions on disk: the record journal, and spare directories made ahead.

    Journal lines are appended with one `write` each, so a backend that dies leaves every line
    whole (a power cut may leave a torn last line, which loading skips).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spares: list[str] = []
        self._refilling = False

    def load(self) -> list[ExecutionRecord]:
        """The records in the journal (compacted when mostly superseded); spare directories are adopted."""
        records: dict[str, ExecutionRecord] = {}
        if not self.root.is_dir():
            return []
        journal = self.root / JOURNAL
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            data = b""
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):  # a torn last line: cut it, or the next append would join it
            os.truncate(journal, len(whole))
        lines = whole.splitlines()
        for line in lines:
            try:
                record = ExecutionRecord(**json.loads(line))
            except (ValueError, TypeError) as exc:
                log.warning("skipping an unreadable line of %s: %s", journal, exc)
                continue
            records[record.execution_id] = record
        if len(lines) > 2 * len(records) + 64:
            self._rewrite(records.values())
        for directory in self.root.iterdir():
            if directory.name in records or not directory.is_dir():
                continue
            outputs = [directory / "stdout", directory / "stderr"]
            if all(p.is_file() and p.stat().st_size == 0 for p in outputs) and len(list(directory.iterdir())) == 2:
                self.spares.append(directory.name)
            else:  # a command started just as the backend died, before its record was written
                log.warning("ignoring %s: output without a record", directory)
        return sorted(records.values(), key=lambda r: (r.create_time_ms, r.execution_id))

    def _rewrite(self, records: Iterable[ExecutionRecord]) -> None:
        tmp = self.root / (JOURNAL + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / JOURNAL)

    def append(self, record: ExecutionRecord) -> None:
        line = _journal_line(record)
        fd = os.open(self.root / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                if os.write(fd, line) != len(line):  # a full disk takes what fits
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                os.ftruncate(fd, end)  # no torn line for the next one to run into
                raise
        finally:
            os.close(fd)

    def take(self) -> str:
        """An execution id whose directory and empty output files exist (made now if none is spare)."""
        return self.spares.pop() if self.spares else _make_spare(self.root)

    async def refill(self) -> None:
        if self._refilling:
            return
        self._refilling = True
        try:
            while len(self.spares) < SPARE_DIRS:
                self.spares.append(await asyncio.to_thread(_make_spare, self.root))
        except OSError as exc:
            log.warning("could not prepare execution directories in %s: %s", self.root, exc)
        finally:
            self._refilling = False


def exit_status_of(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


# -- signalling a command without its nsenter wrapper ------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def shell_pid(process: asyncio.subprocess.Process) -> int:
    """The host pid of the command's bash.

    Started by the devbox's fork server (`forkclient`), `process` is the bash itself. Entered with
    `nsenter` (the fallback), it is nsenter, which forks the bash into the devbox's pid namespace
    and exits with its status. Signals meant for the command go to the bash: a SIGINT or SIGTERM
    that reached nsenter would end it (and so the execution) while the command lives on.
    """
    pid = process.pid
    if (_read(f"/proc/{pid}/comm") or "").strip() != "nsenter":
        return pid
    children = (_read(f"/proc/{pid}/task/{pid}/children") or "").split()
    return int(children[0]) if children else pid


def group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat")
        if stat is None:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(name))
    return members


def signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    """Send `sig` to the command and everything it started (its process group), but not to nsenter."""
    shell = shell_pid(process)
    if shell == process.pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        return
    for pid in group_members(process.pid):
        if pid != process.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


class ExecutionManager:
    """Starts, tracks and persists the executions of every devbox."""

    def __init__(self, devboxes: DevboxManager) -> None:
        self.devboxes = devboxes
        self.watcher = FileWatcher()
        self.idempotency = IdempotencyCache()
        self._tables: dict[str, dict[str, Execution]] = {}
        self._stores: dict[str, ExecutionStore] = {}
        self._by_command_id: dict[tuple[str, str], Execution] = {}
        self._start_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        devboxes.on_stop.append(self._on_devbox_stop)
        devboxes.busy_checks.append(self.running)

    async def startup(self) -> None:
        """A devbox's executions are loaded from disk when it is first used; nothing to load here."""
        childwatch.install()

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self.watcher.close()

    # -- lookup ------------------------------------------------------------------------------

    def _table(self, devbox: Devbox) -> dict[str, Execution]:
        table = self._tables.get(devbox.id)
        if table is None:
            table = self._tables[devbox.id] = self._load(devbox)
        return table

    def _store(self, devbox_id: str) -> ExecutionStore:
        return self._stores[devbox_id]

    def _load(self, devbox: Devbox) -> dict[str, Execution]:
        """The devbox's executions on disk; any still marked running died with the previous backend."""
        root = devbox.state_dir / "executions"
        store = self._stores[devbox.id] = ExecutionStore(root)
        table: dict[str, Execution] = {}
        for record in store.load():
            ex = Execution(record, root / record.execution_id)
            for stream in ("stdout", "stderr"):  # streams and views expect both files
                ex.path(stream).parent.mkdir(parents=True, exist_ok=True)
                ex.path(stream).touch(mode=0o600, exist_ok=True)
            if record.status != "completed":
                with open(ex.path("stderr"), "a") as f:
                    f.write(RESTART_NOTE)
                record.status, record.exit_status, record.end_time_ms = "completed", EXIT_KILLED, now_ms()
                store.append(record)
            ex.done.set()
            table[ex.id] = ex
            if record.command_id:
                self._by_command_id[(devbox.id, record.command_id)] = ex
        return table

    def _spawn_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, devbox_id: str, execution_id: str) -> Execution:
        devbox = self.devboxes.get(devbox_id)
        ex = self._table(devbox).get(execution_id)
        if ex is None:
            raise not_found("execution", execution_id, "use the id returned by the call that started the command")
        return ex

    # -- start -------------------------------------------------------------------------------

    async def start(
        self, devbox_id: str, command: str, *, command_id: str | None = None, attach_stdin: bool = False,
        user: SandboxUser | None = None,
    ) -> Execution:
        """Run `command` in the devbox (as `user`, else its own); with a `command_id` already used on
        this devbox, return that execution."""
        lock = self._start_locks.setdefault(devbox_id, asyncio.Lock())
        async with lock:
            table = self._table(self.devboxes.get(devbox_id))
            if command_id and (existing := self._by_command_id.get((devbox_id, command_id))):
                return existing  # even when the devbox has stopped since: a retry gets what the first call got
            devbox = self.devboxes.require_running(devbox_id)
            store = self._store(devbox_id)
            execution_id = store.take()
            self._spawn_background(store.refill())
            directory = store.root / execution_id
            record = ExecutionRecord(
                execution_id=execution_id,
                devbox_id=devbox.id,
                command=command,
                command_id=command_id,
                attach_stdin=attach_stdin,
                status="running",
                exit_status=None,
                create_time_ms=now_ms(),
            )
            ex = Execution(record, directory, oom_kills_before=self.devboxes.limits.oom_kills(devbox.id))
            flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
            # Through the storage's detached mount: the command's /proc/self/fd/1 names no host path.
            out_fd = self.devboxes.storage.open_file(ex.path("stdout"), flags)
            err_fd = self.devboxes.storage.open_file(ex.path("stderr"), flags)
            try:
                ex.process = await devbox.sandbox.spawn(
                    command,
                    env=self.devboxes.command_env(devbox),
                    stdin=asyncio.subprocess.PIPE if attach_stdin else subprocess.DEVNULL,
                    stdout=out_fd,
                    stderr=err_fd,
                    user=user,
                )
            except Exception as exc:
                store.spares.append(execution_id)  # nothing was written: the directory stays spare
                self.devboxes.require_running(devbox_id)  # the devbox stopped meanwhile: say so
                raise ApiError(503, f"could not start the command in devbox {devbox_id}: {exc}; try again") from None
            finally:
                os.close(out_fd)
                os.close(err_fd)
            try:
                store.append(record)
            except OSError as exc:  # an execution without a record would be lost at the next start
                signal_group(ex.process, signal.SIGKILL)
                await ex.process.wait()
                if is_disk_full(exc):
                    raise disk_full(f"start the command in devbox {devbox_id} (it was stopped at once)") from None
                raise
            table[execution_id] = ex
            if command_id:
                self._by_command_id[(devbox.id, command_id)] = ex
        self.devboxes.add_log(
            devbox.id,
            {"level": "info", "source": "exec", "timestamp_ms": record.create_time_ms, "cmd": command, "cmd_id": execution_id},
        )
        self._spawn_background(self._await_exit(ex))
        return ex

    async def _await_exit(self, ex: Execution) -> None:
        assert ex.process is not None
        with contextlib.suppress(asyncio.CancelledError):
            returncode = await ex.process.wait()
            self._finish(ex, exit_status_of(returncode))

    def _finish(self, ex: Execution, exit_status: int) -> None:
        if ex.finished:
            return
        record = ex.record
        if exit_status == EXIT_KILLED:
            self._note_out_of_memory(ex)
        record.status, record.exit_status, record.end_time_ms = "completed", exit_status, now_ms()
        try:
            self._store(record.devbox_id).append(record)
        except OSError as exc:  # the next start marks it ended with the backend; waiters must not hang
            log.warning("could not record the end of execution %s: %s", record.execution_id, exc)
        if ex.process is not None and ex.process.stdin is not None and not ex.stdin_closed:
            ex.stdin_closed = True
            ex.process.stdin.close()
        ex.done.set()
        for waiter in ex.waiters:
            waiter.set()
        self.devboxes.idle.touch(record.devbox_id)  # its idle time counts from the end of its last command
        self.devboxes.add_log(
            record.devbox_id,
            {
                "level": "info" if exit_status == 0 else "warn",
                "source": "exec",
                "timestamp_ms": record.end_time_ms,
                "cmd": record.command,
                "cmd_id": record.execution_id,
                "exit_code": exit_status,
                "message": f"exited with status {exit_status}",
            },
        )

    def running(self, devbox_id: str) -> bool:
        """Whether a command is running in the devbox (which is then not idle)."""
        return any(not ex.finished for ex in self._tables.get(devbox_id, {}).values())

    def _note_out_of_memory(self, ex: Execution) -> None:
        """A command killed while the kernel OOM-killed in its devbox: say so at the end of its stderr."""
        devbox_id = ex.record.devbox_id
        if self.devboxes.limits.oom_kills(devbox_id) <= ex.oom_kills_before:
            return
        ex.record.killed_for = "out_of_memory"
        with contextlib.suppress(OSError), open(ex.path("stderr"), "a") as f:
            f.write(oom_note(self.devboxes.get(devbox_id).resource_size.memory_gib))

    # -- wait, kill, stdin -------------------------------------------------------------------

    async def wait_for(self, ex: Execution, statuses: list[str], seconds: float) -> bool:
        """Wait until the execution has one of `statuses`; False when `seconds` ran out first."""
        if ex.record.status in statuses:
            return True
        if "completed" not in statuses:
            # It is running (executions are never visible while queued) and can only become completed.
            await asyncio.sleep(seconds)
            return ex.record.status in statuses
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ex.done.wait(), seconds)
        return ex.record.status in statuses

    async def wait_optimistic(self, ex: Execution, seconds: float, *, output_grace: float | None = None) -> None:
        """Wait until the command completes or `seconds` pass (execute's `optimistic_timeout`).

        With `output_grace` (our extension), stop early too once the command has printed
        something and `output_grace` more seconds passed without it completing: a caller can then
        hold the request long for a silent command and still show a talkative one's first line
        at once.
        """
        if output_grace is None or ex.finished:
            await wait_or_timeout(ex.done.wait, seconds)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if await self.wait_for_output(ex, seconds) and not ex.finished:
            await wait_or_timeout(ex.done.wait, max(0.0, min(output_grace, deadline - loop.time())))

    async def wait_for_output(self, ex: Execution, seconds: float) -> bool:
        """Wait until the command has printed something or completed, or `seconds` pass; True once it printed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        wake = asyncio.Event()
        ex.waiters.add(wake)  # set when the command completes
        streams: tuple[Stream, ...] = ("stdout", "stderr")
        polling = not all([self.watcher.subscribe(ex.path(s), wake) for s in streams])
        try:
            while True:
                wake.clear()
                if any(os.stat(ex.path(s)).st_size for s in streams):
                    return True
                if ex.finished or (remaining := deadline - loop.time()) <= 0:
                    return False
                await wait_or_timeout(wake.wait, min(remaining, POLL_SECONDS) if polling else remaining)
        finally:
            ex.waiters.discard(wake)
            for s in streams:
                self.watcher.unsubscribe(ex.path(s), wake)

    async def kill(self, ex: Execution, *, process_group: bool) -> None:
        """Kill the command: its bash alone, or (`process_group`) everything it started, politely first."""
        if ex.finished or ex.process is None:
            return
        if process_group:
            signal_group(ex.process, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ex.done.wait(), KILL_GRACE_SECONDS)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(ex.process.pid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(shell_pid(ex.process), signal.SIGKILL)
        await ex.done.wait()

    async def send_stdin(self, ex: Execution, *, text: str | None, signal_name: str | None) -> None:
        if not ex.record.attach_stdin:
            raise ApiError(
                400,
                f"execution {ex.id} was started without attach_stdin, so its stdin is closed; "
                "start the command with execute_async and attach_stdin=true to send it input",
            )
        if ex.finished:
            raise ApiError(400, f"execution {ex.id} has completed (exit status {ex.record.exit_status}); it reads no more input")
        assert ex.process is not None and ex.process.stdin is not None
        if signal_name == "INTERRUPT":
            signal_group(ex.process, signal.SIGINT)
            return
        if signal_name == "EOF":
            if not ex.stdin_closed:
                ex.stdin_closed = True
                ex.process.stdin.close()
            return
        if ex.stdin_closed:
            raise ApiError(400, f"the stdin of execution {ex.id} was closed by an EOF signal; it takes no more text")
        transport = ex.process.stdin.transport
        pending = transport.get_write_buffer_size()  # type: ignore[attr-defined]
        if pending > STDIN_MAX_PENDING:
            raise ApiError(
                400,
                f"the command of execution {ex.id} is not reading its stdin ({pending} bytes sent earlier are still "
                "waiting); send more once it has read them, or kill it",
            )
        try:
            ex.process.stdin.write((text or "").encode())
        except (BrokenPipeError, ConnectionResetError):
            raise ApiError(400, f"the command of execution {ex.id} has closed its stdin; it takes no more input") from None

    async def _on_devbox_stop(self, devbox_id: str) -> None:
        """The devbox's sandbox is about to stop: kill its commands and complete their executions (137)."""
        running = [ex for ex in self._tables.get(devbox_id, {}).values() if not ex.finished and ex.process]
        for ex in running:
            assert ex.process is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(ex.process.pid, signal.SIGKILL)
        for ex in running:
            assert ex.process is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ex.process.wait(), STOP_WAIT_SECONDS)
            self._finish(ex, EXIT_KILLED)

    # -- views -------------------------------------------------------------------------------

    def view(self, ex: Execution, last_n: int = 100) -> dict[str, Any]:
        """DevboxAsyncExecutionDetailView, with the last `last_n` lines of output (also while running)."""
        body: dict[str, Any] = {"devbox_id": ex.record.devbox_id, "execution_id": ex.id, "status": ex.record.status}
        if ex.record.exit_status is not None:
            body["exit_status"] = ex.record.exit_status
        if ex.record.killed_for:
            body["killed_for"] = ex.record.killed_for  # ours: why the kernel ended it
        for stream in ("stdout", "stderr"):
            text, truncated = tail_lines(ex.path(stream), last_n, VIEW_MAX_BYTES, growing=not ex.finished)
            body[stream] = text
            body[f"{stream}_truncated"] = truncated
        return body

    def sync_view(self, ex: Execution) -> dict[str, Any]:
        """DevboxExecutionDetailView of `execute_sync`: the output's last SYNC_MAX_BYTES bytes per stream."""
        body: dict[str, Any] = {"devbox_id": ex.record.devbox_id, "exit_status": ex.record.exit_status}
        if ex.record.killed_for:
            body["killed_for"] = ex.record.killed_for
        for stream in ("stdout", "stderr"):
            body[stream] = tail_lines(ex.path(stream), 1 << 62, SYNC_MAX_BYTES)[0]
        return body
