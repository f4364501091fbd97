"""How a data directory's one backend is found: its state file and locks (light: no server code).

At most one backend serves a data directory. It holds an exclusive flock on `backend.lock` for
its whole life; the kernel drops the lock however the process ends (kill -9 included), so "is
the lock held" is the liveness test, never a pid that may have been reused. Right after taking
the lock it binds its port and writes `backend.json` (mode 0600: pid, URL, API key) for
`devbox-mcp` processes to find it; connections made before it is ready wait in the listen
backlog. It removes the file as soon as it starts to stop (`server.serve_registered`).

A backend with an idle limit stops itself once it has been idle that long: idle means no HTTP
request in progress (open streams and long-polls count as requests), no connection open through
a tunnel, and no devbox with a sandbox (provisioning, initializing, running, suspending or
resuming); the clock restarts at the end of every request and when a sandbox stops.

Finding or starting a backend is the commands' job (`mcp_server/commands/embedded.py`); `start_lock`
here is what they serialise on, so two processes starting at once share one backend.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("devbox_mcp.local")

STATE_FILE = "backend.json"
LOCK_FILE = "backend.lock"
START_LOCK_FILE = "backend-start.lock"
LOG_FILE = "backend.log"
IDLE_ENV = "DEVBOX_LOCAL_IDLE_SHUTDOWN_SECONDS"
DEFAULT_IDLE_SECONDS = 600.0
# A backend waits this long for the data-directory lock that a prober holds for a moment.
_LOCK_PATIENCE_SECONDS = 2.0


class DataDirBusy(Exception):
    """Another backend already serves this data directory."""


@dataclass(frozen=True)
class ServiceState:
    """What `backend.json` says: where the backend of a data directory listens, and its key."""

    pid: int
    base_url: str
    api_key: str = field(repr=False)  # a secret: never in a repr, a log line or a traceback
    started_at: float = 0.0  # seconds since the epoch
    idle_shutdown_seconds: float | None = None  # None: runs until stopped


def idle_seconds_from_env(environ: dict[str, str] | None = None) -> float | None:
    """`DEVBOX_LOCAL_IDLE_SHUTDOWN_SECONDS` (default 600); 0 means never stop when idle."""
    raw = (os.environ if environ is None else environ).get(IDLE_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_IDLE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{IDLE_ENV}={raw!r} is not a number of seconds (0 keeps the backend running)")
    return seconds or None


# -- the state file ----------------------------------------------------------------------------


def read_state(data_dir: Path) -> ServiceState | None:
    """The state file's contents; None when it is missing or not a state file."""
    try:
        data = json.loads((Path(data_dir) / STATE_FILE).read_text(encoding="utf-8"))
        return ServiceState(
            pid=int(data["pid"]),
            base_url=str(data["base_url"]),
            api_key=str(data["api_key"]),
            started_at=float(data.get("started_at") or 0.0),
            idle_shutdown_seconds=data.get("idle_shutdown_seconds"),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_state(data_dir: Path, state: ServiceState) -> None:
    """Replace the state file atomically; it is created 0600, so the key is never readable by others."""
    path = Path(data_dir) / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        json.dump(asdict(state), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def remove_state(data_dir: Path, pid: int | None = None) -> None:
    """Remove the state file (only if it names `pid`, when given: a successor may have written it)."""
    path = Path(data_dir) / STATE_FILE
    if pid is not None:
        state = read_state(data_dir)
        if state is not None and state.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- locks -------------------------------------------------------------------------------------


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def hold_data_dir(data_dir: Path) -> int:
    """Take the data directory's serving lock for the life of this process (returns its fd).

    Raises `DataDirBusy` when another backend holds it. A prober (`is_served`) holds it for a
    moment only, hence the short patience.
    """
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = _open_lock(Path(data_dir) / LOCK_FILE)
    deadline = time.monotonic() + _LOCK_PATIENCE_SECONDS
    while not _try_flock(fd):
        if time.monotonic() >= deadline:
            os.close(fd)
            state = read_state(data_dir)
            where = f" (pid {state.pid} at {state.base_url})" if state else ""
            raise DataDirBusy(f"another backend already serves {data_dir}{where}")
        time.sleep(0.01)
    return fd


def is_served(data_dir: Path) -> bool:
    """Whether a live process holds the data directory's serving lock (starting, serving or stopping)."""
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if _try_flock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def start_lock(data_dir: Path, timeout: float) -> Iterator[None]:
    """Held while a process looks for the backend and, finding none, starts one."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = _open_lock(Path(data_dir) / START_LOCK_FILE)
    try:
        deadline = time.monotonic() + timeout
        while not _try_flock(fd):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"another process has been starting the backend of {data_dir} for {timeout:g} s"
                )
            time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it is dead, only not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def stop(data_dir: Path, timeout: float = 30.0) -> int | None:
    """Stop the backend serving `data_dir` (SIGTERM, then SIGKILL at `timeout`); its pid, or None if none.

    Waits until it has released the data directory, so its sandboxes are gone when this returns.
    """
    state = read_state(data_dir)
    if not is_served(data_dir):
        if state is not None:
            remove_state(data_dir, state.pid)  # left by a backend that crashed
        return None
    if state is None or not process_alive(state.pid):
        # Holding the lock but not yet (or no longer) named in the state file: starting or stopping.
        _wait_unserved(data_dir, timeout)
        return state.pid if state else None
    os.kill(state.pid, signal.SIGTERM)
    if not _wait_unserved(data_dir, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
        _wait_unserved(data_dir, 10.0)
    remove_state(data_dir, state.pid)
    return state.pid


def _wait_unserved(data_dir: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_served(data_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
