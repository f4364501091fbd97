"""Start processes that enter a devbox from one hardened thread, as asyncio processes.

`no_new_privs` and a seccomp filter are attributes of a thread, inherited by every process it
forks. Setting them in a child between fork and exec (`preexec_fn`) would cost a full fork of
the backend (about 4 ms with a 150 MB heap, more than the command), and an extra exec of a
helper would cost one more process; so one thread of the backend is hardened once
(`seccomp.harden_this_thread`) and forks every command that enters a sandbox: `nsenter`, and so
the command's bash, start with both already in force, at the price of one hand-off to that
thread. The rest of the backend keeps its privileges.

The process is built here rather than by `asyncio.create_subprocess_exec`, which forks on the
event loop's thread; what is returned is still an `asyncio.subprocess.Process` (pid, wait,
returncode, signals, stdin/stdout/stderr streams, communicate), reaped through a pidfd.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from . import seccomp

_PIPE_LIMIT = 2**16  # asyncio's default StreamReader limit
P = TypeVar("P", bound="PipedProcess")

_lock = threading.Lock()
# One thread per profile: devboxes on the host's system, and those with a system of their own
# (`seccomp.harden_this_thread`'s `own_system`).
_executors: dict[bool, concurrent.futures.ThreadPoolExecutor] = {}


def _hardened_executor(own_system: bool = False) -> concurrent.futures.ThreadPoolExecutor:
    with _lock:
        if own_system not in _executors:
            _executors[own_system] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="devbox-spawn-own" if own_system else "devbox-spawn",
                initializer=seccomp.harden_this_thread,
                initargs=(own_system,),
            )
        return _executors[own_system]


def warm_up(own_system: bool = False) -> None:
    """Start (and harden) the thread now rather than at the first command."""
    _hardened_executor(own_system).submit(lambda: None).result()


class PipedProcess(asyncio.subprocess.Process):
    """An `asyncio.subprocess.Process` built here rather than by asyncio: its streams are connected
    by `spawn_with`, and whoever learns of its end reports it (`_exit`)."""

    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop) -> None:
        # Not the base __init__: there is no subprocess transport.
        self._loop = loop
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._pipes: dict[int, asyncio.BaseTransport] = {}
        self._returncode: int | None = None
        self._exited: asyncio.Future[int] = loop.create_future()

    def _attach(
        self, stdin: asyncio.StreamWriter | None, outputs: dict[int, tuple[asyncio.StreamReader, asyncio.BaseTransport]]
    ) -> None:
        self.stdin = stdin
        self.stdout = outputs[1][0] if 1 in outputs else None
        self.stderr = outputs[2][0] if 2 in outputs else None
        self._pipes = {fd: transport for fd, (_reader, transport) in outputs.items()}

    def _exit(self, returncode: int) -> None:
        if self._returncode is None:
            self._returncode = returncode
        if not self._exited.done():
            self._exited.set_result(self._returncode)

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def _read_stream(self, fd: int) -> bytes:  # used by communicate()
        stream = self.stderr if fd == 2 else self.stdout
        assert stream is not None
        output = await stream.read()
        self._pipes[fd].close()
        return output


class HardenedProcess(PipedProcess):
    """A child forked by the hardened thread, reaped through a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(popen.pid, loop)
        self._popen = popen
        self._watch()

    def _watch(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # no pidfds (Linux < 5.3): a thread waits instead
            waiting = self._loop.run_in_executor(None, _wait_status, self.pid)
            waiting.add_done_callback(lambda f: self._exit(f.result()))
            return

        def reap() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._exit(_wait_status(self.pid))

        self._loop.add_reader(pidfd, reap)

    def _exit(self, returncode: int) -> None:
        self._popen.returncode = returncode  # so Popen never waits for it again (its __del__ would)
        super()._exit(returncode)


def _wait_status(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped elsewhere: its status is lost
        return 255
    return os.waitstatus_to_exitcode(status)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
    own_system: bool = False,
    pass_fds: Sequence[int] = (),
    executable: str | None = None,
) -> HardenedProcess:
    """Start `argv` as the leader of a new session, forked by the hardened thread (of the profile of
    a devbox with a system of its own when `own_system`).

    `stdin`, `stdout`, `stderr`: a file descriptor, `subprocess.DEVNULL`, `subprocess.PIPE`, or
    (for stderr) `subprocess.STDOUT`, as for `asyncio.create_subprocess_exec`; `pass_fds` are kept
    open in the child; `executable` runs instead of argv[0] (which the child then only shows).
    """
    loop = asyncio.get_running_loop()

    async def start(child_in: int, child_out: int, child_err: int) -> HardenedProcess:
        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                list(argv), executable=executable, stdin=child_in, stdout=child_out, stderr=child_err,
                env=dict(env), start_new_session=True, close_fds=True, pass_fds=list(pass_fds),
            )  # fmt: skip

        return HardenedProcess(await loop.run_in_executor(_hardened_executor(own_system), popen), loop)

    return await spawn_with(start, stdin=stdin, stdout=stdout, stderr=stderr)


async def spawn_with(
    start: Callable[[int, int, int], Awaitable[P]], *, stdin: int, stdout: int, stderr: int
) -> P:
    """`start(stdin, stdout, stderr)` (descriptors, or `subprocess.DEVNULL` / `STDOUT`), with pipes made
    for those given as `subprocess.PIPE` and connected to the returned process's streams."""
    loop = asyncio.get_running_loop()
    ours: list[int] = []  # our ends of the pipes
    theirs: list[int] = []  # the child's ends, closed here once it has them
    try:

        def child_end(spec: int, reading: bool) -> tuple[int, int | None]:
            if spec != subprocess.PIPE:
                return spec, None
            r, w = os.pipe()
            ours.append(w if reading else r)
            theirs.append(r if reading else w)
            return (r, w) if reading else (w, r)

        child_in, parent_in = child_end(stdin, reading=True)
        child_out, parent_out = child_end(stdout, reading=False)
        child_err, parent_err = child_end(stderr, reading=False)
        proc = await start(child_in, child_out, child_err)
    except BaseException:
        for fd in ours + theirs:
            os.close(fd)
        raise
    for fd in theirs:
        os.close(fd)
    writer: asyncio.StreamWriter | None = None
    outputs: dict[int, tuple[asyncio.StreamReader, asyncio.BaseTransport]] = {}
    if parent_in is not None:
        protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop)
        transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(parent_in, "wb", buffering=0))
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
    for fd, parent_end in ((1, parent_out), (2, parent_err)):
        if parent_end is not None:
            reader = asyncio.StreamReader(limit=_PIPE_LIMIT, loop=loop)
            read_transport, _ = await loop.connect_read_pipe(
                lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop), os.fdopen(parent_end, "rb", buffering=0)
            )
            outputs[fd] = (reader, read_transport)
    proc._attach(writer, outputs)
    return proc
