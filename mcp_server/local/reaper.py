"""What a backend leaves on the host must go when it dies, however it dies: devbox disk mounts and cgroups.

A reaper process, started at the first such thing and in a session of its own (a kill of the
backend's process group spares it), waits for the backend to end: its stdin is a pipe only the
backend holds. Then it lazily unmounts every mount matching the patterns it was given (the devbox
disks and spare disks of each data directory used) and removes the given cgroup directories with
their children (and their parent, once empty), retrying for a few seconds while the devboxes'
processes die. A backend that
stops cleanly has undone all of it already; the reaper then finds nothing to do.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from pathlib import Path

# Reads `M <pattern>` and `C <directory>` lines until EOF (the backend is gone).
_SCRIPT = r"""
set -f
pats=
dirs=
while IFS= read -r line; do
  case "$line" in
    "M "*) pats="$pats
${line#M }" ;;
    "C "*) dirs="$dirs
${line#C }" ;;
  esac
done
nl='
'
# The mounts as they were when the backend died: a mount made at the same place afterwards (by a
# new backend, or a test looking at a disk) is not ours to remove.
mounts=$(cat /proc/self/mounts)
while read -r _dev mnt _rest; do
  IFS=$nl
  for p in $pats; do
    [ -n "$p" ] || continue
    case "$mnt" in $p) umount -l "$mnt" 2>/dev/null ;; esac
  done
  unset IFS
done <<MOUNTS
$mounts
MOUNTS
[ -n "$dirs" ] || exit 0
# Likewise the child cgroups: one made afterwards (a new backend's devbox, on the same data directory,
# empty until its launch joins it) is not ours to remove.
children=
IFS=$nl
for d in $dirs; do
  for child in $(ls "$d" 2>/dev/null); do
    [ -d "$d/$child" ] && children="$children
$d/$child"
  done
done
unset IFS
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  left=
  IFS=$nl
  for c in $children; do
    [ -d "$c" ] && rmdir "$c" 2>/dev/null
  done
  for d in $dirs; do
    [ -d "$d" ] || continue
    rmdir "$d" 2>/dev/null || left=1
    rmdir "${d%/*}" 2>/dev/null  # the devbox-mcp subtree too, once no backend uses it
  done
  unset IFS
  [ -z "$left" ] && exit 0
  sleep 0.5
done
"""


def _mounts_escape(path: str) -> str:
    """A path as /proc/self/mounts writes it (octal escapes), quoted for a `case` pattern."""
    out = []
    for ch in path:
        if ch in " \t\n\\":
            out.append("\\\\" + format(ord(ch), "03o"))
        elif ch in "*?[":
            out.append("[" + ch + "]")
        elif ch == "]":
            out.append("\\]")
        else:
            out.append(ch)
    return "".join(out)


class _Reaper:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._write_fd: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._sent: set[str] = set()

    def _send(self, line: str) -> None:
        with self._lock:
            if line in self._sent:
                return
            if self._write_fd is None:
                read_fd, self._write_fd = os.pipe()  # both close-on-exec: only the reaper gets the read end
                try:
                    self._process = subprocess.Popen(
                        ["/bin/sh", "-c", _SCRIPT],
                        stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True, close_fds=True,
                    )  # fmt: skip
                finally:
                    os.close(read_fd)
            os.write(self._write_fd, (line + "\n").encode())
            self._sent.add(line)


@functools.cache
def _reaper() -> _Reaper:
    return _Reaper()


def unmount_at_exit(mountpoint: Path) -> None:
    """Have `mountpoint`, and every mount of its kind in its data directory, unmounted when we die."""
    mountpoint = mountpoint.resolve()  # as /proc/self/mounts names it
    if mountpoint.name.startswith("mnt-"):  # a spare disk: <data dir>/disks/mnt-<token>
        pattern = _mounts_escape(str(mountpoint.parent)) + "/mnt-*"
    else:  # a devbox's disk: <data dir>/devboxes/<id>/disk
        pattern = _mounts_escape(str(mountpoint.parent.parent)) + "/*/" + _mounts_escape(mountpoint.name)
    _reaper()._send("M " + pattern)


def remove_at_exit(directory: Path) -> None:
    """Have the cgroup `directory` (and its child cgroups) removed when we die."""
    if "\n" not in str(directory):
        _reaper()._send("C " + str(directory))
