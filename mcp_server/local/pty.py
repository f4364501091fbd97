"""PTY sessions: named interactive shells in a devbox, their output, their tunnels.

A session is a host pseudo-terminal whose slave is the controlling terminal of an interactive
`bash -l` started inside the devbox's namespaces as executions are (`Sandbox.spawn(terminal=True)`:
the devbox's user, its variables and secrets, TERM=xterm-256color, job control). The backend
keeps the master: it resizes it (the kernel sends SIGWINCH to the foreground process group),
reads its foreground process group to signal it, and moves the bytes to and from the one
WebSocket client attached (`pty_api.py` has the wire contract).

Output costs bounded memory whatever the program writes:
- attached: at most `ATTACHED_HIGH_WATER` bytes wait for the client; past that the backend stops
  reading the master until the WebSocket has taken them, so a flood stalls the program (the
  kernel's pty buffer fills and its writes block), as a slow terminal does;
- detached: the shell keeps running and the last `DETACHED_KEEP` bytes are kept for the next
  attach (older output is dropped, as off the top of a terminal's scrollback).

A session ends when its shell exits, on `close` (SIGHUP to the session's processes, SIGKILL to
what ignores it after `CLOSE_GRACE_SECONDS`), when no client has been attached for
`idle_ttl_seconds` (DEVBOX_PTY_IDLE_TTL_SECONDS, default 300), and when the devbox stops
(suspend, shutdown, backend exit); the same name then starts a fresh shell.

Tunnels (`create_pty_tunnel`) are how a client reaches a devbox's sessions: a random key that
routes to the devbox and a bearer token for it, fresh on every call. Only a SHA-256 of the token
is kept; tunnels end when the devbox stops, and each devbox keeps its newest `MAX_TUNNELS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import signal
import struct
import termios
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import now_ms
from .config import env_seconds
from .errors import ApiError

if TYPE_CHECKING:
    from .devboxes import DevboxManager

SESSION_NAME = re.compile(r"[A-Za-z0-9_-]{1,256}")
DEFAULT_COLS, DEFAULT_ROWS = 80, 24
MAX_DIMENSION = 1000
READ_CHUNK = 64 * 1024
ATTACHED_HIGH_WATER = 256 * 1024  # output waiting for the attached client; reading stops above it
DETACHED_KEEP = 1024 * 1024  # output kept for the next client while none is attached (the latest bytes)
CLOSE_GRACE_SECONDS = 2.0  # between the SIGHUP of `close` and the SIGKILL of what survived it
STOP_WAIT_SECONDS = 5.0  # how long a stopping devbox waits for its shells' host processes to be reaped
MAX_TUNNELS = 32  # per devbox; the oldest goes first
SHELL_COMMAND = "exec /bin/bash -l"
PROTOCOL_VERSION = "1"  # PtyConnectView.protocol_version: raw bytes in binary frames, close codes of pty_api
_TIOCGSID = getattr(termios, "TIOCGSID", 0x5429)  # Linux; Python names only some of the tty ioctls


def check_name(name: str) -> str:
    if not SESSION_NAME.fullmatch(name):
        raise ApiError(
            400, f"session_name must be 1-256 ASCII letters, digits, '-' and '_'; got {name[:60]!r}"
        )
    return name


def check_size(cols: int | None, rows: int | None, *, required: bool) -> tuple[int, int] | None:
    """`(cols, rows)` when given (both, each 1..1000); None when neither is and they are optional."""
    if cols is None and rows is None and not required:
        return None
    for label, value in (("cols", cols), ("rows", rows)):
        if value is None:
            raise ApiError(400, f"{label} is missing: give cols and rows together (each 1..{MAX_DIMENSION})")
        if not 1 <= value <= MAX_DIMENSION:
            raise ApiError(400, f"{label} must be between 1 and {MAX_DIMENSION}; got {value}")
    assert cols is not None and rows is not None
    return cols, rows


def signal_number(name: str) -> int:
    """A POSIX signal name (`SIGINT`, or `INT`) as its number; 400 for anything else."""
    upper = name.strip().upper()
    wanted = upper if upper.startswith("SIG") else "SIG" + upper
    member = getattr(signal.Signals, wanted, None) if not wanted.startswith("SIG_") else None
    if not isinstance(member, signal.Signals):
        raise ApiError(
            400,
            f"signal: {name[:40]!r} is not a POSIX signal name; use one such as SIGINT, SIGTERM or SIGHUP",
        )
    return int(member)


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _session_members(sid: int) -> list[int]:
    """Host pids of the processes in session `sid` (the shell, its jobs, what they started)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            members.append(int(name))
    return members


@dataclass(eq=False)
class PtySession:
    """One named shell: its pty master, its process, the output waiting for a client."""

    devbox_id: str
    name: str
    master: int
    process: asyncio.subprocess.Process
    cols: int
    rows: int
    create_time_ms: int = field(default_factory=now_ms)
    attached: bool = False
    ended: bool = False
    end_reason: str = ""
    _pending: bytearray = field(default_factory=bytearray)
    _reading: bool = False
    _eof: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _sid: int | None = None
    _expiry: asyncio.TimerHandle | None = None
    _writable: asyncio.Future[None] | None = None  # what a blocked `write` waits for

    # -- output ----------------------------------------------------------------------------

    @property
    def waiting_for_client(self) -> bool:
        """Whether reading has stopped because the attached client has not taken the output yet."""
        return self.attached and not self._reading and not self._eof and not self.ended

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def start_reading(self) -> None:
        if not self._reading and not self._eof and not self.ended:
            asyncio.get_running_loop().add_reader(self.master, self._read_ready)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.master)
            self._reading = False

    def _read_ready(self) -> None:
        """Read what the pty has, up to READ_CHUNK: a pty hands out at most 4 KiB a read, and one
        frame per read would cost the client a frame (and us a wake-up) per 4 KiB."""
        data = b""
        while len(data) < READ_CHUNK:
            try:
                chunk = os.read(self.master, READ_CHUNK - len(data))
            except BlockingIOError:
                break
            except OSError:  # EIO: every slave end is closed
                chunk = b""
            if not chunk:
                self._eof = True
                self._stop_reading()
                break
            data += chunk
        if data:
            self._pending += data
            if self.attached:
                if len(self._pending) >= ATTACHED_HIGH_WATER:
                    self._stop_reading()  # backpressure: the client takes it first
            elif len(self._pending) > DETACHED_KEEP:
                del self._pending[: len(self._pending) - DETACHED_KEEP]
        self._changed.set()

    async def output(self) -> bytes | None:
        """The output waiting for the client (all of it, at most a few hundred KiB); None once the
        session has ended and nothing is left to send."""
        while not self._pending:
            if self.ended:  # not at EOF alone: the shell's exit, which says how it ended, follows
                return None
            self._changed.clear()
            await self._changed.wait()
        data = bytes(self._pending)
        self._pending.clear()
        self.start_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Put back output a client did not get (it left mid-send), for the next one."""
        self._pending[:0] = data
        if len(self._pending) > DETACHED_KEEP:
            del self._pending[: len(self._pending) - DETACHED_KEEP]

    # -- input -----------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Write to the terminal; waits while the program is not reading its input (the kernel's
        buffer is full), which stops the backend from reading the client's next message."""
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view and not self.ended:
            try:
                written = os.write(self.master, view)
            except BlockingIOError:
                self._writable = writable = loop.create_future()
                loop.add_writer(self.master, lambda w=writable: w.done() or w.set_result(None))
                try:
                    await writable
                finally:
                    self._writable = None
                    if not self.ended:  # `finish` has removed it before closing the master
                        loop.remove_writer(self.master)
                continue
            except OSError:  # EIO: the shell is gone; its end is reported by `output`
                return
            view = view[written:]

    # -- control ---------------------------------------------------------------------------

    def resize(self, cols: int, rows: int) -> None:
        _set_size(self.master, cols, rows)  # the kernel sends SIGWINCH to the foreground group
        self.cols, self.rows = cols, rows

    def foreground_group(self) -> int | None:
        """The host pgid of the terminal's foreground process group; None when there is none."""
        if self.ended:
            return None
        try:
            pgid = os.tcgetpgrp(self.master)
        except OSError:
            return None
        return pgid if pgid > 0 else None

    def session_id(self) -> int | None:
        """The host pid leading the shell's session (the pty's session), remembered once known."""
        if self._sid is None and not self.ended:
            with contextlib.suppress(OSError):
                (sid,) = struct.unpack("i", fcntl.ioctl(self.master, _TIOCGSID, b"\0\0\0\0"))
                self._sid = sid if sid > 0 else None
        return self._sid

    def finish(self, reason: str) -> None:
        """Mark the session ended and release the master (which hangs the terminal up). Output
        already read still goes to an attached client; `output` then says the end."""
        if self.ended:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        self.session_id()
        if not self._eof:  # what the shell wrote last, before the master goes
            for _ in range(16):
                try:
                    chunk = os.read(self.master, READ_CHUNK)
                except OSError:
                    break
                if not chunk:
                    break
                self._pending += chunk
            if len(self._pending) > DETACHED_KEEP:
                del self._pending[: len(self._pending) - DETACHED_KEEP]
        self._stop_reading()
        if self._writable is not None:  # a write waiting for the program to read: it never will
            asyncio.get_running_loop().remove_writer(self.master)
            if not self._writable.done():
                self._writable.set_result(None)
        self.ended, self.end_reason = True, reason
        os.close(self.master)
        self._changed.set()


class TunnelRegistry:
    """`create_pty_tunnel`'s tunnels: key -> (devbox, SHA-256 of the token)."""

    def __init__(self) -> None:
        self._tunnels: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def create(self, devbox_id: str) -> dict[str, str]:
        key, token = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
        self._tunnels[key] = (devbox_id, hashlib.sha256(token.encode()).digest())
        mine = [k for k, (d, _) in self._tunnels.items() if d == devbox_id]
        for old in mine[: max(0, len(mine) - MAX_TUNNELS)]:
            del self._tunnels[old]
        return {"tunnel_key": key, "auth_token": token}

    def devbox_for(self, key: str, authorization: str) -> str:
        """The devbox a tunnel routes to, for a request carrying `authorization`; 404/401 otherwise."""
        entry = self._tunnels.get(key)
        if entry is None:
            raise ApiError(
                404,
                "unknown PTY tunnel key (tunnels end when their devbox stops); "
                "call create_pty_tunnel on a running devbox for a new one",
            )
        scheme, _, token = authorization.partition(" ")
        digest = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, entry[1]):
            raise ApiError(
                401,
                "missing or wrong tunnel token: send 'Authorization: Bearer <auth_token>' from create_pty_tunnel",
            )
        return entry[0]

    def drop_devbox(self, devbox_id: str) -> None:
        for key in [k for k, (d, _) in self._tunnels.items() if d == devbox_id]:
            del self._tunnels[key]


class PtyManager:
    """Every devbox's named PTY sessions and PTY tunnels."""

    def __init__(self, devboxes: DevboxManager) -> None:
        self.devboxes = devboxes
        self.idle_ttl_seconds = env_seconds("DEVBOX_PTY_IDLE_TTL_SECONDS")
        self.tunnels = TunnelRegistry()
        self._sessions: dict[tuple[str, str], PtySession] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        devboxes.on_stop.append(self._on_devbox_stop)
        devboxes.busy_checks.append(self.attached)

    async def shutdown(self) -> None:
        for session in list(self._sessions.values()):
            self._end(session, "the backend stopped")
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def attached(self, devbox_id: str) -> bool:
        """Whether a client is attached to one of the devbox's sessions (it is in use, not idle)."""
        return any(s.attached for (d, _), s in self._sessions.items() if d == devbox_id)

    def find(self, devbox_id: str, name: str) -> PtySession | None:
        """The devbox's running session `name`, if there is one."""
        session = self._sessions.get((devbox_id, name))
        return session if session is not None and not session.ended else None

    def get(self, devbox_id: str, name: str) -> PtySession:
        session = self._sessions.get((devbox_id, check_name(name)))
        if session is None:
            raise ApiError(
                404,
                f"PTY session {name!r} not found (it was never opened, or it ended: closed, expired after "
                f"{self.idle_ttl_seconds:g}s detached, its shell exited or its devbox stopped); "
                f"GET /pty/{name} starts it",
            )
        return session

    # -- open ------------------------------------------------------------------------------

    async def open(self, devbox_id: str, name: str, size: tuple[int, int] | None) -> tuple[PtySession, bool]:
        """The running session `name` of the devbox, started first when there is none: (session, created)."""
        check_name(name)
        lock = self._locks.setdefault((devbox_id, name), asyncio.Lock())
        async with lock:
            devbox = self.devboxes.require_running(devbox_id)
            existing = self._sessions.get((devbox_id, name))
            if existing is not None and not existing.ended:
                if size is not None:
                    existing.resize(*size)
                self._arm_expiry(existing)
                return existing, False
            cols, rows = size or (DEFAULT_COLS, DEFAULT_ROWS)
            assert devbox.sandbox is not None
            # The host's pty (inside, `tty` says "not a tty"). One from the devbox's own devpts was
            # tried: a resume right after a suspend then now and then found the disk still in use.
            master, slave = os.openpty()
            try:
                _set_size(slave, cols, rows)
                os.set_blocking(master, False)
                process = await devbox.sandbox.spawn(
                    SHELL_COMMAND,
                    env=self.devboxes.command_env(devbox),
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    terminal=True,
                )
            except Exception as exc:
                os.close(master)
                self.devboxes.require_running(devbox_id)  # the devbox stopped meanwhile: say so
                raise ApiError(
                    503, f"could not start a shell in devbox {devbox_id}: {exc}; try again"
                ) from None
            finally:
                os.close(slave)
            session = PtySession(devbox_id, name, master, process, cols, rows)
            self._sessions[(devbox_id, name)] = session
            session.start_reading()
            self._arm_expiry(session)
            self._background(self._await_exit(session))
        self.devboxes.add_log(devbox_id, {"source": "exec", "message": f"opened PTY session {name}"})
        return session, True

    async def _await_exit(self, session: PtySession) -> None:
        status = await session.process.wait()
        self._end(session, f"the shell exited (status {status})")

    # -- attach ----------------------------------------------------------------------------

    def attach(self, session: PtySession) -> None:
        if session.attached:
            raise ApiError(409, f"PTY session {session.name!r} already has a client attached")
        session.attached = True
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        session.start_reading()
        self.devboxes.idle.touch(session.devbox_id)

    def detach(self, session: PtySession) -> None:
        session.attached = False
        if not session.ended:
            self._arm_expiry(session)
        self.devboxes.idle.touch(session.devbox_id)

    def _arm_expiry(self, session: PtySession) -> None:
        """End the session once it has had no client for idle_ttl_seconds."""
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        if session.attached or session.ended:
            return

        def expire() -> None:
            session._expiry = None
            if not session.attached:
                self.close(session, f"no client for {self.idle_ttl_seconds:g}s")

        session._expiry = asyncio.get_running_loop().call_later(self.idle_ttl_seconds, expire)

    # -- control ---------------------------------------------------------------------------

    def signal(self, session: PtySession, name: str) -> None:
        number = signal_number(name)
        pgid = session.foreground_group()
        if pgid is None:
            raise ApiError(
                400, f"PTY session {session.name!r} has no foreground process group (its shell has exited)"
            )
        try:
            os.killpg(pgid, number)
        except ProcessLookupError:
            raise ApiError(
                400, f"PTY session {session.name!r} has no foreground process group (it has just exited)"
            ) from None

    def close(self, session: PtySession, reason: str = "closed by the control action") -> None:
        """SIGHUP to the foreground group and every process of the shell's session, then end it;
        SIGKILL, after CLOSE_GRACE_SECONDS, to whatever of the session ignored the hang-up."""
        sid = session.session_id()
        pgid = session.foreground_group()
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGHUP)
        members = _session_members(sid) if sid else []
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGHUP)
        self._end(session, reason)
        if sid:
            self._background(self._kill_survivors(session, sid))

    async def _kill_survivors(self, session: PtySession, sid: int) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.process.wait(), CLOSE_GRACE_SECONDS)
        for pid in await asyncio.to_thread(_session_members, sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            session.process.kill()

    def _end(self, session: PtySession, reason: str) -> None:
        if self._sessions.get((session.devbox_id, session.name)) is session:
            del self._sessions[(session.devbox_id, session.name)]
        session.finish(reason)

    async def _on_devbox_stop(self, devbox_id: str) -> None:
        """The sandbox is about to stop (and kill every shell in it): end its sessions and tunnels.

        What started each shell runs on the host (`setsid`, `nsenter`, which holds the devbox's root
        and working directory): it is killed and awaited here, as executions' are, so nothing of
        the devbox is in use once its sandbox has stopped (its disk is detached next)."""
        self.tunnels.drop_devbox(devbox_id)
        ending = [s for (d, _), s in self._sessions.items() if d == devbox_id]
        for session in ending:
            sid = session.session_id()
            self._end(session, "the devbox stopped")
            for pid in (sid, session.process.pid):
                if pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
        for session in ending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.process.wait(), STOP_WAIT_SECONDS)

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def connect_view(
    session: PtySession, created: bool, connect_url: str, idle_ttl_seconds: float
) -> dict[str, Any]:
    """PtyConnectView."""
    return {
        "session_name": session.name,
        "status": "running",
        "protocol_version": PROTOCOL_VERSION,
        "connect_url": connect_url,
        "created": created,
        "attached": session.attached,
        "cols": session.cols,
        "rows": session.rows,
        "idle_ttl_seconds": int(idle_ttl_seconds),
    }
