"""The backend's side of a devbox's fork server (`forkserver`): start it, start commands through it.

One fork server per running sandbox, started beside it (`Sandbox.start`) from the hardened
spawning thread (`spawner`), so it and every command it starts carry the sandbox's seccomp filter.
It joins the devbox's cgroups and takes its process limit before anything else, so commands land
where `nsenter`'s did. A command it starts is a `HelperProcess`: an `asyncio.subprocess.Process`
whose pid is the command's host pid (the leader of its own session and process group, so
`os.killpg(proc.pid, sig)` reaches it and what it started), whose end the fork server reports.

When the fork server is unavailable (it failed to start, died, or refused a request) the sandbox
enters with `nsenter` instead (`ForkServerUnavailable`). A command running when it dies goes on
(the devbox's pid 1 adopts it), but its exit status is lost: it ends with 255, as a child reaped
elsewhere does in `spawner`.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import spawner
from .childwatch import end_process

log = logging.getLogger("devbox_mcp.local")

HELPER_NAME = "devbox-spawn-helper"  # its argv[0]: what `ps` shows in the devbox
START_SECONDS = 10.0
STATUS_LOST = 255
_RECV_BYTES = 1 << 16


class ForkServerUnavailable(Exception):
    """The fork server cannot start this command; the caller enters with nsenter instead."""


@dataclass(frozen=True)
class Entry:
    """Where the fork server goes: the sandbox's pid 1 and the namespaces it has of its own, and
    what it takes on first (the devbox's cgroups and process limit)."""

    init_pid: int
    namespaces: tuple[str, ...]
    own_ids: bool  # a system of its own: the devbox's root, and commands' ids set per request
    cgroup_procs: tuple[str, ...] = ()
    max_processes: int | None = None


@functools.cache
def _source() -> bytes:
    return Path(__file__).with_name("forkserver.py").read_bytes()


def _host_pid(pidfd: int) -> int:
    """The host pid of the process behind a pidfd (its fdinfo speaks our pid namespace)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise OSError(f"no pid in the fdinfo of pidfd {pidfd}")


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    return fds


class HelperProcess(spawner.PipedProcess):
    """A command the fork server started; `pid` is its host pid."""

    def __init__(self, pidfd: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(_host_pid(pidfd), loop)
        self._pidfd: int | None = pidfd  # kept to see the end of a command whose fork server died

    def _exit(self, returncode: int) -> None:
        self._close_pidfd()
        super()._exit(returncode)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _orphaned(self, returncode: int = STATUS_LOST) -> None:
        """The fork server is gone: the command's end will be seen, its status not (`returncode` instead)."""
        if self._pidfd is None or self._exited.done():
            return
        self._loop.add_reader(self._pidfd, lambda: self._exit(returncode))


class ForkServer:
    """A running fork server, reached over a SOCK_SEQPACKET socket pair."""

    def __init__(self, sock: socket.socket, name: str, stopping: asyncio.Event | None = None) -> None:
        self._sock = sock
        self._name = name  # for the log: the sandbox's hostname
        self._stopping = stopping  # set once its sandbox stops: its end is then expected, not news
        self._loop = asyncio.get_running_loop()
        self._next_id = 0
        self._starting: dict[int, asyncio.Future[HelperProcess]] = {}
        self._running: dict[int, HelperProcess] = {}
        self._ready: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        self.pid: int | None = None  # host pid
        self.devbox_pid: int | None = None  # its pid inside the devbox
        self.dead: str | None = None  # why it is no longer used
        self._launcher: spawner.HardenedProcess | None = None
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def start(
        cls, entry: Entry, *, own_system: bool, name: str, stopping: asyncio.Event | None = None
    ) -> ForkServer:
        """Start a fork server into `entry` and wait until it is inside (ForkServerUnavailable if it fails)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        source = os.memfd_create("forkserver", os.MFD_CLOEXEC)
        try:
            os.write(source, _source())
            os.lseek(source, 0, os.SEEK_SET)
            server = cls(ours, name, stopping)
            try:
                server._launcher = await spawner.spawn(
                    [HELPER_NAME, "-I", "-S", "-", str(theirs.fileno())],
                    executable=sys.executable, env={}, own_system=own_system, pass_fds=[theirs.fileno()],
                    stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            except BaseException:
                server.close()
                raise
        finally:
            theirs.close()
            os.close(source)
        try:
            server._send({
                "init_pid": entry.init_pid, "namespaces": list(entry.namespaces), "own_ids": entry.own_ids,
                "cgroup_procs": list(entry.cgroup_procs), "max_processes": entry.max_processes,
            }, [])  # fmt: skip
            server.pid, server.devbox_pid = await asyncio.wait_for(asyncio.shield(server._ready), START_SECONDS)
        except BaseException as exc:
            server.close()
            if isinstance(exc, (OSError, TimeoutError, ForkServerUnavailable)):
                raise ForkServerUnavailable(f"the spawn helper did not start: {exc or type(exc).__name__}") from None
            raise
        return server

    # -- requests --------------------------------------------------------------------------

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
        uid: int | None = None,
    ) -> HelperProcess:
        """Start `argv` in the devbox as the leader of a new session (as `uid`, a system of its own only).

        `stdin`, `stdout`, `stderr` as for `spawner.spawn`.
        """
        if self.dead:
            raise ForkServerUnavailable(self.dead)

        async def start(child_in: int, child_out: int, child_err: int) -> HelperProcess:
            devnull: int | None = None
            try:
                if subprocess.DEVNULL in (child_in, child_out, child_err):
                    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                fds = [devnull if fd == subprocess.DEVNULL else fd for fd in (child_in, child_out, child_err)]
                if fds[2] == subprocess.STDOUT:
                    fds[2] = fds[1]
                assert all(fd is not None and fd >= 0 for fd in fds)
                return await self._request(
                    {"argv": list(argv), "env": dict(env), "uid": uid, "gid": uid}, [fd for fd in fds if fd is not None]
                )
            finally:
                if devnull is not None:
                    os.close(devnull)

        return await spawner.spawn_with(start, stdin=stdin, stdout=stdout, stderr=stderr)

    async def _request(self, request: dict[str, object], fds: list[int]) -> HelperProcess:
        ident = self._next_id
        self._next_id += 1
        started: asyncio.Future[HelperProcess] = self._loop.create_future()
        self._starting[ident] = started
        try:
            try:
                self._send({"id": ident, **request}, fds)
            except OSError as exc:  # too big for one message, or the buffer is full: this one enters with nsenter
                raise ForkServerUnavailable(f"could not send the command to the spawn helper: {exc}") from None
            return await started
        finally:
            self._starting.pop(ident, None)

    def _send(self, message: dict[str, object], fds: list[int]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self._sock.sendmsg([data], ancillary)

    # -- answers ---------------------------------------------------------------------------

    def _readable(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(
                    _RECV_BYTES, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(f"its socket failed: {exc}")
                return
            fds = _received_fds(ancillary)
            if not data and not fds:
                self._lost("it exited")
                return
            try:
                self._answer(json.loads(data), fds)
            except (ValueError, KeyError, TypeError, OSError) as exc:
                for fd in fds:
                    os.close(fd)
                self._lost(f"it sent an unreadable answer ({exc})")
                return

    def _answer(self, message: dict[str, object], fds: list[int]) -> None:
        ident = message.get("id")
        if ident is None:  # about the server itself
            if "error" in message or not fds:
                self._ready.done() or self._ready.set_exception(ForkServerUnavailable(str(message.get("error"))))
                return
            try:
                host_pid = _host_pid(fds[0])
            finally:
                os.close(fds[0])
            self._ready.done() or self._ready.set_result((host_pid, int(message["pid"])))  # type: ignore[call-overload]
            return
        assert isinstance(ident, int)
        if "exit" in message:
            process = self._running.pop(ident, None)
            if process is not None:
                process._exit(int(message["exit"]))  # type: ignore[call-overload]
            return
        started = self._starting.get(ident)
        if "error" in message or not fds:
            if started is not None and not started.done():
                started.set_exception(ForkServerUnavailable(f"the spawn helper could not start it: {message.get('error')}"))
            return
        try:
            process = HelperProcess(fds[0], self._loop)  # before the ack: the command is not reaped until then
        except OSError:
            os.close(fds[0])
            raise
        self._running[ident] = process  # before the ack too: its exit comes after it
        self._send({"ack": ident}, [])
        if started is not None and not started.done():
            started.set_result(process)

    def _lost(self, why: str) -> None:
        if self.dead:
            return
        self.dead = f"the spawn helper is gone ({why})"
        if not self._ready.done():
            self._ready.set_exception(ForkServerUnavailable(why))
        elif self._stopping is None or not self._stopping.is_set():
            log.warning("the spawn helper of sandbox %s is gone (%s): commands enter it with nsenter", self._name, why)
        self._detach()
        for started in self._starting.values():
            if not started.done():
                started.set_exception(ForkServerUnavailable(self.dead))
        for process in self._running.values():
            process._orphaned()
        self._running.clear()

    def _detach(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            self._loop.remove_reader(self._sock.fileno())

    async def ended(self) -> None:
        """Wait until the process that started it has exited and been reaped: it stays the
        server's parent (see forkserver.main), and exits once the server is gone."""
        await end_process(self._launcher)

    def close(self) -> None:
        """Stop using it; it exits once the socket is closed (and with the sandbox in any case)."""
        if not self.dead:
            self.dead = "the sandbox stopped"
        if self._sock.fileno() >= 0:
            self._detach()
            self._sock.close()
        if not self._ready.done():
            self._ready.set_exception(ForkServerUnavailable(self.dead))
            self._ready.exception()  # retrieved: nobody may wait for it any more
        for process in self._running.values():
            process._orphaned(-signal.SIGKILL)  # what the sandbox's stop ends them with
        self._running.clear()
