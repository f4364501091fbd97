"""File transfer into and out of a devbox, as the devbox user, through the devbox's own eyes.

Every file operation runs a tiny shell script inside the devbox's sandbox (the same way an
execution runs), so a path means exactly what it means to a command in the devbox: relative
paths start at /home/user, symlinks resolve inside the sandbox, and whatever the devbox user
may not read or write (host secrets, read-only system directories, paths that do not exist in
the sandbox such as the backend's data directory) fails as it would for that user. No path is
ever resolved on the host, so no symlink race can point the backend at a host file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import re
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from .devboxes import Devbox, not_running_message
from .errors import DISK_FULL_STATUS, ApiError, disk_full, is_disk_full
from .executions import signal_group
from .sandbox import SANDBOX_HOME, SandboxError

MAX_PATH_BYTES = 4096
MAX_READ_BYTES = 100 * 1024 * 1024  # read_file_contents; larger files go through download_file
MAX_UPLOAD_BYTES = 4 * 1024 * 1024 * 1024
CHUNK = 256 * 1024
ANSWER_SECONDS = 30.0  # for the script's status line: a devbox this slow gets a 504, not a hung request

# Prints one status line, then (for OK) streams the file. Checks as the devbox user.
_READ_SCRIPT = r"""
p=$1
if [ ! -e "$p" ]; then echo "ERR ENOENT"; exit 0; fi
if [ -d "$p" ]; then echo "ERR EISDIR"; exit 0; fi
if [ ! -f "$p" ]; then echo "ERR ENOTREG"; exit 0; fi
if ! exec 3<"$p"; then echo "ERR EACCES"; exit 0; fi
echo "OK $(stat -L -c %s /dev/fd/3)"
exec cat <&3
"""

# Prints OK once ready to receive, writes stdin to a temporary file next to the target and
# renames it into place only when all of it arrived (so no reader ever sees half a file), then DONE.
# The temporary file's name carries the write's token ($2): see `remove_partial_writes`.
_WRITE_SCRIPT = r"""
p=$1
case "$p" in */) echo "ERR EISDIR"; exit 0;; esac
d=$(dirname -- "$p")
if ! err=$(mkdir -p -- "$d" 2>&1); then echo "ERR EWRITE ${err##*: }"; exit 0; fi
if [ -d "$p" ]; then echo "ERR EISDIR"; exit 0; fi
if ! t=$(mktemp -p "$d" "@PARTIAL_PREFIX@$2.XXXXXX" 2>&1); then echo "ERR EWRITE ${t##*: }"; exit 0; fi
trap 'rm -f -- "$t"' EXIT
trap 'exit 1' TERM INT
echo OK
cat > "$t" || exit 1
if [ -f "$p" ]; then chmod --reference="$p" -- "$t" 2>/dev/null || chmod 644 -- "$t"; else chmod 644 -- "$t"; fi
if ! err=$(mv -fT -- "$t" "$p" 2>&1); then echo "ERR EWRITE ${err##*: }"; exit 0; fi
trap - EXIT
echo DONE
"""
# A name no user file has by chance: the prefix and a random token of the backend's own.
PARTIAL_PREFIX = ".devbox-mcp-partial."
PARTIAL_WRITES_DIR = "partial-writes"  # in the devbox's state directory, out of the sandbox's reach
_TOKEN = re.compile(r"[0-9a-f]{32}")
_WRITE_SCRIPT = _WRITE_SCRIPT.replace("@PARTIAL_PREFIX@", PARTIAL_PREFIX)
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


def check_path(path: object, field: str) -> str:
    if not isinstance(path, str) or not path:
        raise ApiError(400, f"{field} must be a non-empty path (relative to {SANDBOX_HOME}, or absolute)")
    if "\0" in path:
        raise ApiError(400, f"{field} must not contain NUL characters")
    if len(path.encode("utf-8", errors="surrogateescape")) > MAX_PATH_BYTES:
        raise ApiError(400, f"{field} is longer than {MAX_PATH_BYTES} bytes")
    return path


def _describe(devbox: Devbox, path: str) -> str:
    shown = path if path.startswith("/") else posixpath.join(SANDBOX_HOME, path)
    return f"{shown!r} in devbox {devbox.id}"


def _status_error(devbox: Devbox, path: str, line: str, *, writing: bool) -> ApiError:
    code, _, detail = line.partition(" ")[2].partition(" ")
    where = _describe(devbox, path)
    if code == "ENOENT":
        return ApiError(
            404, f"no such file: {where}; list the directory with an execution (ls) to check the path"
        )
    if code == "EISDIR":
        return ApiError(400, f"{where} is a directory; give the path of a file")
    if code == "ENOTREG":
        return ApiError(400, f"{where} is not a regular file (device, socket or pipe)")
    if code == "EACCES":
        return ApiError(403, f"permission denied: the devbox user cannot read {where}")
    if writing:
        return _write_error(devbox, path, detail.strip() or "write failed")
    return ApiError(400, f"cannot read {where}: {detail.strip() or line}")


def _write_error(devbox: Devbox, path: str, reason: str) -> ApiError:
    if any(text in reason for text in _DISK_FULL_TEXTS):
        if devbox.disk:  # the devbox's own disk (its size), not the host's
            return ApiError(
                DISK_FULL_STATUS,
                f"cannot write {_describe(devbox, path)}: the devbox's disk is full ({devbox.resource_size.disk_gib} GiB, "
                "its size); nothing was changed. Delete files in the devbox, or create one with a larger resource_size",
            )
        return disk_full(f"write {_describe(devbox, path)}")
    return ApiError(400, f"cannot write {_describe(devbox, path)}: {reason}")


async def _start(
    devbox: Devbox, script: str, path: str, *, stdin: int, token: str = ""
) -> asyncio.subprocess.Process:
    # Checked by the route, but an upload can take long enough for the devbox to stop meanwhile.
    sandbox = devbox.sandbox
    try:
        if sandbox is None:
            raise SandboxError("no sandbox")
        return await sandbox.spawn(
            script, env={}, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, args=(path, token)
        )
    except SandboxError:
        raise ApiError(400, not_running_message(devbox)) from None


async def _status_line(proc: asyncio.subprocess.Process, devbox: Devbox, path: str, verb: str) -> str:
    assert proc.stdout is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), ANSWER_SECONDS)
    except TimeoutError:
        raise ApiError(
            504, f"cannot {verb} {_describe(devbox, path)}: the devbox did not answer within {ANSWER_SECONDS:g} s; try again"
        ) from None
    return raw.decode(errors="replace").strip()


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await proc.wait()


async def _open_for_read(devbox: Devbox, path: str) -> tuple[asyncio.subprocess.Process, int]:
    proc = await _start(devbox, _READ_SCRIPT, path, stdin=subprocess.DEVNULL)
    try:
        line = await _status_line(proc, devbox, path, "read")
    except BaseException:
        await _kill(proc)
        raise
    if not line.startswith("OK "):
        await _kill(proc)
        if not line:
            raise ApiError(400, f"cannot read {_describe(devbox, path)}: the devbox did not answer")
        raise _status_error(devbox, path, line, writing=False)
    return proc, int(line[3:])


async def read_text(devbox: Devbox, path: str) -> str:
    """The file as UTF-8 text (read_file_contents)."""
    proc, size = await _open_for_read(devbox, path)
    try:
        if size > MAX_READ_BYTES:
            raise ApiError(
                413,
                f"{_describe(devbox, path)} is {size} bytes; read_file_contents returns at most "
                f"{MAX_READ_BYTES} bytes, use download_file for larger files",
            )
        assert proc.stdout is not None
        data = await proc.stdout.read(MAX_READ_BYTES + 1)
        while len(data) <= MAX_READ_BYTES:  # a pipe read may return less than asked
            more = await proc.stdout.read(MAX_READ_BYTES + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > MAX_READ_BYTES:
            raise ApiError(
                413, f"{_describe(devbox, path)} grew beyond {MAX_READ_BYTES} bytes while being read"
            )
    finally:
        await _kill(proc)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400,
            f"{_describe(devbox, path)} is not UTF-8 text (invalid byte at offset {exc.start}); "
            "use download_file to get binary files",
        ) from None


async def download(devbox: Devbox, path: str) -> tuple[int, AsyncIterator[bytes]]:
    """The file's size and its bytes as a stream (download_file); the stream kills the reader when dropped."""
    proc, size = await _open_for_read(devbox, path)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(CHUNK):
                yield chunk
        finally:
            await _kill(proc)

    return size, chunks()


async def write(devbox: Devbox, path: str, source: bytes | AsyncIterator[bytes]) -> None:
    """Write a file atomically (temp file + rename), creating parent directories.

    The write's token is recorded in the devbox's state directory until the script is done
    with its temporary file, so a temporary file orphaned by a backend killed mid-write is
    found and removed at the next start (`remove_partial_writes`).
    """
    token = secrets.token_hex(16)
    try:
        marker = partial_writes_dir(devbox) / token
        marker.touch(exist_ok=False)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(f"write {_describe(devbox, path)}") from None
        raise
    try:
        proc = await _start(devbox, _WRITE_SCRIPT, path, stdin=subprocess.PIPE, token=token)
    except BaseException:
        marker.unlink(missing_ok=True)
        raise
    try:
        await _feed(proc, devbox, path, source)
    finally:
        if await _end(proc):
            marker.unlink(missing_ok=True)


async def _feed(
    proc: asyncio.subprocess.Process, devbox: Devbox, path: str, source: bytes | AsyncIterator[bytes]
) -> None:
    """Send `source` to the write script and read its verdict."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    line = await _status_line(proc, devbox, path, "write")
    if line != "OK":
        if not line:
            raise ApiError(400, f"cannot write {_describe(devbox, path)}: the devbox did not answer")
        raise _status_error(devbox, path, line, writing=True)
    try:
        if isinstance(source, bytes):
            proc.stdin.write(source)
            await proc.stdin.drain()
        else:
            async for chunk in source:
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the writer failed; its stderr says why
    rest = (await proc.stdout.read()).decode(errors="replace").strip()
    err = (await proc.stderr.read(4096)).decode(errors="replace").strip()
    await proc.wait()
    if rest.endswith("DONE"):
        return
    if rest.startswith("ERR"):
        raise _status_error(devbox, path, rest, writing=True)
    raise _write_error(devbox, path, err.rsplit(": ", 1)[-1] if err else "the write did not complete")


async def _end(proc: asyncio.subprocess.Process) -> bool:
    """Make sure the write script ended; True when it exited on its own terms, its temporary file gone.

    A script killed by a signal (its sandbox stopped, or it ignored TERM) may leave its temporary
    file; its record then stays for `remove_partial_writes`.
    """
    if proc.returncode is not None:
        return proc.returncode >= 0
    # Interrupted (client gone, error): TERM lets the script remove its temporary file (its trap).
    # Not to nsenter, which would end at once and answer before the script has cleaned up.
    signal_group(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 5)
        return True
    except (TimeoutError, asyncio.CancelledError):
        await _kill(proc)
        return False


def partial_writes_dir(devbox: Devbox) -> Path:
    """Where writes in flight are recorded (and early upload parts spooled): backend-private."""
    path = devbox.state_dir / PARTIAL_WRITES_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def remove_partial_writes(devbox: Devbox) -> int:
    """At start-up, before the devbox runs: remove what writes cut short by a dead backend left.

    Only the temporary files of writes recorded as in flight are removed, found by their
    exact tokens, so a user's file of a similar name stays. The walk never follows a symlink
    and removes by directory handle, and no devbox process runs yet to swap a directory for a
    link meanwhile. Returns how many temporary files were removed.
    """
    journal = devbox.state_dir / PARTIAL_WRITES_DIR
    try:
        entries = os.listdir(journal)
    except FileNotFoundError:
        return 0
    tokens = [name for name in entries if _TOKEN.fullmatch(name)]
    removed = 0
    if tokens:
        leftover = re.compile(re.escape(PARTIAL_PREFIX) + "(" + "|".join(tokens) + r")\.[A-Za-z0-9]{6}")
        for root in (devbox.home, devbox.tmp):
            if not root.is_dir() or root.is_symlink():
                continue
            for _dir, _subdirs, names, dir_fd in os.fwalk(root, follow_symlinks=False):
                for name in names:
                    if leftover.fullmatch(name):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=dir_fd)
                            removed += 1
    for name in entries:  # the records, and spooled upload parts (uploads.py)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal / name)
    return removed


def home_relative(path: str, field: str, home: str = SANDBOX_HOME) -> str:
    """A path under the user's home as a clean relative path; for files placed before the sandbox starts."""
    check_path(path, field)
    full = posixpath.normpath(path if path.startswith("/") else posixpath.join(home, path))
    if not full.startswith(home + "/"):
        raise ApiError(400, f"{field} {path!r} must be a file under {home}")
    return full[len(home) + 1 :]


def write_mounted_file(devbox: Devbox, path: str, contents: str) -> None:
    """Place a `file_mounts` file in a fresh home (before anything ran in it, so no symlink can exist)."""
    relative = home_relative(path, "file_mounts path", devbox.sandbox_user.home)
    target = devbox.home / relative
    parent = devbox.home
    for part in Path(relative).parts[:-1]:
        parent = parent / part
        if not parent.exists():
            parent.mkdir()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(contents)
    except OSError:
        target.unlink(missing_ok=True)  # a full disk: no half file in the devbox
        raise
