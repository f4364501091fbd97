"""A pidfd child watcher for Python 3.11, so that starting a command does not start a thread.

Python 3.11's default `ThreadedChildWatcher` starts one thread per subprocess to wait for it,
which costs about 2 ms per execution on a busy machine, as much as the command itself. 3.12
waits on a pidfd in the event loop instead; this does the same on 3.11. Unlike 3.11's own
`PidfdChildWatcher` it serves whichever loop spawns the child, so the backend's loop (on its
own thread) and the MCP server's loop can both start subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any


async def end_process(proc: asyncio.subprocess.Process | None, grace: float = 5.0) -> None:
    """Wait up to `grace` seconds for a helper process told to exit (its exit descriptor closed),
    then kill it; either way it is reaped. Helpers such as bubblewrap exit by themselves once their
    child is gone: killing them first would leave that child a zombie of the host's reaper."""
    if proc is None:
        return
    try:
        await asyncio.wait_for(proc.communicate(), grace)
    except (TimeoutError, Exception):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await proc.communicate()


class RunningLoopPidfdWatcher(asyncio.AbstractChildWatcher):
    def __init__(self) -> None:
        self._pidfds: dict[int, tuple[asyncio.AbstractEventLoop, int]] = {}

    def add_child_handler(self, pid: int, callback: Callable[..., Any], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # already reaped elsewhere: its status is lost
            loop.call_soon(callback, pid, 255, *args)
            return
        self._pidfds[pid] = (loop, pidfd)
        loop.add_reader(pidfd, self._reap, pid, callback, args)

    def _reap(self, pid: int, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._forget(pid)
        try:
            _, status = os.waitpid(pid, 0)
            returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            returncode = 255
        callback(pid, returncode, *args)

    def _forget(self, pid: int) -> bool:
        entry = self._pidfds.pop(pid, None)
        if entry is None:
            return False
        loop, pidfd = entry
        if not loop.is_closed():
            loop.remove_reader(pidfd)
        os.close(pidfd)
        return True

    def remove_child_handler(self, pid: int) -> bool:
        return self._forget(pid)

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        pass  # every child is watched by the loop that spawned it

    def close(self) -> None:
        for pid in list(self._pidfds):
            self._forget(pid)

    def is_active(self) -> bool:
        return True

    def __enter__(self) -> RunningLoopPidfdWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def install() -> None:
    """Use pidfds to wait for subprocesses on Python < 3.12 when the kernel has them (Linux ≥ 5.3)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        current = asyncio.get_child_watcher()
        if type(current) is asyncio.ThreadedChildWatcher:
            asyncio.set_child_watcher(RunningLoopPidfdWatcher())
