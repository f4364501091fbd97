"""The host's side of devbox storage (`data_dir/devboxes`): nosuid, and never named inside a devbox.

- nosuid: on the host's system a devbox's user is the backend's uid on the host, so a file
  made setuid in a home would be a setuid program of that uid in the data directory. Those
  devboxes cannot make one (the seccomp filter refuses setuid modes); devboxes with a system of
  their own can, owned by an unprivileged id of their range (`idmap`). While the backend runs the
  storage directory is also bind-mounted onto itself `nosuid,nodev` (other flags kept), so a
  setuid file that got there anyway runs with its caller's rights. The mount goes at exit; if
  the backend dies without removing it (kill -9), a guard process does (it waits on a pipe only
  the backend holds, like a sandbox's lifeline), so no mount outlives its backend to make the
  data directory undeletable; one left all the same is adopted by the next backend. Between runs
  the directory's mode (0700) keeps other users out.
- No host paths inside: the files a devbox's processes get as stdout and stderr (executions,
  launch commands, the entrypoint) are opened through a detached clone of that mount
  (`open_tree`), whose root is the storage directory, so `/proc/self/fd/1` in a devbox reads
  `/<devbox id>/executions/<execution id>/stdout` instead of the host's path.

Both need CAP_SYS_ADMIN. A backend without it opens files by their host path, and its devbox
user is its own unprivileged uid, whose setuid files grant nothing more than that uid has.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("devbox_mcp.local")

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_RELATIME = 1024, 2048, 4096, 1 << 21
_MNT_DETACH = 2
_KEPT_FLAGS = (  # statvfs flag -> mount flag, kept when remounting nosuid
    (os.ST_RDONLY, _MS_RDONLY),
    (os.ST_NOEXEC, _MS_NOEXEC),
    (os.ST_NOATIME, _MS_NOATIME),
    (os.ST_NODIRATIME, _MS_NODIRATIME),
    (os.ST_RELATIME, _MS_RELATIME),
)
# Unmounts the storage once its stdin ends, i.e. when the backend is gone; deaf to the signals
# that end a terminal's process group (it has a session of its own too).
_GUARD_SCRIPT = 'trap "" INT TERM HUP QUIT; read -r _; exec umount -l "$0"'
_SYS_OPEN_TREE = 428  # the same number on every architecture (added in Linux 5.2)
_OPEN_TREE_CLONE, _AT_RECURSIVE = 1, 0x8000


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _is_own_mount_point(path: Path) -> bool:
    """Whether `path` is a mount point, and of the filesystem its parent is on (a bind, not a disk)."""
    if os.stat(path).st_dev != os.stat(path.parent).st_dev:
        return False
    target = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mountinfo:
        for line in mountinfo:
            point = line.split(" ")[4]
            for escape, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                point = point.replace(escape, char)
            if point == target:
                return True
    return False


class Storage:
    """`root` as the backend holds it while running; `open` at start-up, `close` at exit."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()  # mountinfo and open_tree name it so
        self._clone: int | None = None  # detached clone of the storage mount
        self._mounted = False  # the nosuid bind is ours to remove at exit
        self._guard: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None  # the guard unmounts when this closes

    @property
    def nosuid(self) -> bool:
        return bool(os.statvfs(self.root).f_flag & os.ST_NOSUID)

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Only root (the backend) may enter: homes hold files the sandbox user (host uid) made.
        os.chmod(self.root, 0o700)
        if os.geteuid() != 0:
            return
        libc = _libc()
        try:
            self._mount_nosuid(libc)
        except OSError as exc:
            log.warning("could not mount the devbox storage %s nosuid: %s", self.root, exc)
        if self._mounted:
            self._start_guard()
        try:
            flags = _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC
            self._clone = _check(libc.syscall(_SYS_OPEN_TREE, -100, str(self.root).encode(), flags), "open_tree")
        except OSError as exc:
            log.warning("devboxes will see host paths of their output files (no detached mount: %s)", exc)

    def _mount_nosuid(self, libc: ctypes.CDLL) -> None:
        if self.nosuid:
            # Ours, left by a backend that was killed: remove it at exit this time. (A filesystem
            # mounted nosuid needs nothing.)
            self._mounted = _is_own_mount_point(self.root)
            return
        target = str(self.root).encode()
        _check(libc.mount(target, target, None, _MS_BIND, None), "bind mount")
        self._mounted = True
        flags = os.statvfs(self.root).f_flag
        kept = sum(mount_flag for stat_flag, mount_flag in _KEPT_FLAGS if flags & stat_flag)
        _check(
            libc.mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV | kept, None),
            "remount nosuid",
        )

    def _start_guard(self) -> None:
        read_end, self._lifeline = os.pipe()  # both close-on-exec: no other child holds the write end
        try:
            self._guard = subprocess.Popen(
                ["/bin/sh", "-c", _GUARD_SCRIPT, str(self.root)],
                stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            log.warning("no guard for the devbox storage mount (a crash would leave it mounted): %s", exc)
        finally:
            os.close(read_end)

    def open_file(self, path: Path, flags: int, mode: int = 0o600) -> int:
        """Open a file under the storage directory to hand to a devbox process as its output."""
        if self._clone is None:
            return os.open(path, flags, mode)
        return os.open(path.relative_to(self.root), flags, mode, dir_fd=self._clone)

    def close(self) -> None:
        if self._clone is not None:
            os.close(self._clone)
            self._clone = None
        if self._guard is not None:  # first, or it would unmount whatever is mounted here next
            with contextlib.suppress(ProcessLookupError):
                self._guard.kill()
            self._guard.wait()
            self._guard = None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._mounted:
            try:
                _check(_libc().umount2(str(self.root).encode(), _MNT_DETACH), "umount")
            except OSError as exc:
                log.warning("could not unmount the devbox storage %s: %s", self.root, exc)
            self._mounted = False
