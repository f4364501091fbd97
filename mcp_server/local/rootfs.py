"""A devbox's own system: the devbox image, read-only, under a writable layer of the devbox's own.

How a sandbox with a system of its own starts (the backend is root; `sandbox.Sandbox` drives it):

1. `unshare --mount` gives the launch a private mount namespace, where (as the host's root) the
   overlay is mounted: lower = the image, upper/work = directories in the devbox's state
   directory. Nothing of it reaches the host's mount table, and it goes away with the sandbox.
   Meanwhile the backend moves the launch into the devbox's cgroups (`cgroups.join`); it waits
   for that (its gate) before it goes on, so everything from bubblewrap on starts inside them.
2. `setpriv` drops to the id range's root (an unprivileged host uid) and execs bubblewrap, which
   creates the user namespace and blocks (`--userns-block-fd`) until the backend has mapped it
   (`idmap.write_maps`: ids 0..65535 inside are the range on the host).
3. bubblewrap binds the overlay as `/` and adds /proc, /dev, the home, /tmp and the generated
   identity files. It mounts everything nosuid; the resident process (uid 0 inside, holding
   CAP_SYS_ADMIN in the devbox's namespace only) remounts `/` with setuid allowed, so that
   `sudo` works, then waits for the end of its lifeline like the plain sandbox's.

Everything a devbox installs or changes lands in the upper directory (owned by the id range):
it survives executions, suspend/resume and backend restarts, and is removed at shutdown. The
image and the host are never written.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .idmap import IdRange

# Run by bash in the private mount namespace, as the host's root. One `mount --all` of a generated
# fstab (`fstab`) mounts, over the launch directory (an existing host directory; hidden in this
# namespace only), a tmpfs holding what bubblewrap binds: the overlay at root/ and the devbox's
# home and /tmp at home/ and tmp/. bubblewrap runs as an unprivileged uid that could not reach
# the data directory; there it can. The layers are opened here (descriptors from the backend's
# namespace would not do) and named as /proc/self/fd paths, so no host path shows in the devbox's
# mount table, then closed, as is the fstab: nothing of the host stays reachable from the devbox.
# Then it says so and waits at its gate while the backend moves it into the devbox's cgroups and,
# its namespace having begun as a copy of the host's mount table, detaches the other devboxes'
# disks there (`detach_foreign_disks`); nothing from the backend, the gate closed: it stops.
# {lower} {upper} {work} {fstab} {gate}: descriptor numbers; $1..$3: the layers; $4: setpriv;
# $5: bubblewrap; $6/$7: the range's root uid/gid; the rest: bubblewrap's arguments.
_LAUNCH_SCRIPT = """set -e
exec {lower}<"$1" {upper}<"$2" {work}<"$3"
mount --all --fstab /proc/self/fd/{fstab}
exec {lower}<&- {upper}<&- {work}<&- {fstab}<&-
echo mounted
read -r -u {gate} _ || exit 125
exec {gate}<&-
setpriv=$4 bwrap=$5 uid=$6 gid=$7
shift 7
exec "$setpriv" --reuid="$uid" --regid="$gid" --clear-groups -- "$bwrap" "$@"
"""
_CLONE_FS, _CLONE_NEWNS, _MNT_DETACH = 0x00000200, 0x00020000, 2
LAUNCH_DIR = "/mnt" if os.path.isdir("/mnt") else "/tmp"

# The resident process of a devbox with its own system (see the module docstring, step 3).
INIT_COMMAND = (
    "/bin/sh", "-c",
    "if mount -o remount,bind,suid / 2>/dev/null; then echo ready; else echo ready-nosuid; fi; "
    "exec >/dev/null 2>&1; read -r _; exit 0",
)  # fmt: skip
NOSUID_WARNING = (
    "setuid programs (sudo, su) do not work in this devbox: its resident process could not remount / "
    "(is the `mount` package still installed in it?)"
)


@dataclass(frozen=True)
class RootFs:
    """The layers of one devbox's system; all but `image` live in the devbox's state directory."""

    image: Path  # the image's root filesystem (read-only lower layer, shared)
    upper: Path  # what the devbox changed
    work: Path  # overlayfs's scratch directory (same filesystem as `upper`)

    @classmethod
    def of(cls, image: Path, state_dir: Path) -> RootFs:
        return cls(image, state_dir / "system", state_dir / "system-work")

    def prepare(self, ids: IdRange) -> None:
        """Create the devbox's layer directories (idempotent; a resume finds them as they were)."""
        if not self.upper.exists():
            self.upper.mkdir(mode=0o755)
            # The overlay's `/` takes the upper directory's owner and mode: the devbox's root, 0755.
            os.chown(self.upper, ids.host_uid(0), ids.host_gid(0))
            os.chmod(self.upper, 0o755)
        self.work.mkdir(mode=0o700, exist_ok=True)

    def remove(self) -> None:
        for path in (self.upper, self.work):
            shutil.rmtree(path, ignore_errors=True)


def launch_command(
    *, unshare: str, bash: str, setpriv: str, bwrap: str, ids: IdRange, layers: RootFs, fds: LaunchFds
) -> list[str]:
    """The command that mounts the devbox's system and starts bubblewrap (append bubblewrap's arguments)."""
    script = _LAUNCH_SCRIPT.format(lower=fds.lower, upper=fds.upper, work=fds.work, fstab=fds.fstab, gate=fds.gate)
    return [
        unshare, "--mount", "--propagation", "private", "--",
        bash, "--noprofile", "--norc", "-c", script, "devbox-launch",
        str(layers.image), str(layers.upper), str(layers.work),
        setpriv, bwrap, str(ids.host_uid(0)), str(ids.host_gid(0)),
    ]  # fmt: skip


@dataclass(frozen=True)
class LaunchFds:
    """Descriptor numbers of the launch script: the fstab and its gate (passed in) and the layers (opened there)."""

    fstab: int
    gate: int  # a pipe: one line from the backend once the launch is in the devbox's cgroups
    lower: int
    upper: int
    work: int

    @classmethod
    def around(cls, fstab: int, gate: int, taken: set[int]) -> LaunchFds:
        free = (n for n in range(3, 1 << 16) if n not in taken and n not in (fstab, gate))
        return cls(fstab, gate, next(free), next(free), next(free))


def fstab(home: Path, tmp: Path, fds: LaunchFds, host_dirs: Sequence[Path] = ()) -> bytes:
    """What the launch script mounts, in order (see its comment); then, read-only, each of
    `host_dirs` (bubblewrap, as the range's root, could not reach the files in them where they are)."""
    top = _fstab(Path(LAUNCH_DIR))
    layers = f"lowerdir=/proc/self/fd/{fds.lower},upperdir=/proc/self/fd/{fds.upper},workdir=/proc/self/fd/{fds.work}"
    lines = [
        f"devbox-launch {top} tmpfs mode=0755,size=64k,nosuid,nodev 0 0",
        f"devbox {top}/root overlay {layers},X-mount.mkdir 0 0",
        f"{_fstab(home)} {top}/home none bind,X-mount.mkdir 0 0",
        f"{_fstab(tmp)} {top}/tmp none bind,X-mount.mkdir 0 0",
    ]
    for index, path in enumerate(host_dirs):
        lines.append(f"{_fstab(path)} {top}/host-files-{index} none bind,ro,X-mount.mkdir 0 0")
    return ("\n".join(lines) + "\n").encode()


def detach_foreign_disks(pid: int, own_disk: Path | None) -> int:
    """Detach, in the launch's mount namespace (that of `pid`, bubblewrap's monitor), every loop-device
    mount but the devbox's own; how many there were.

    Its copy of the host's mount table would otherwise pin every other devbox's disk for this
    devbox's whole life (a suspended devbox could not get it back, its image's blocks would outlive
    its shutdown). Done by the backend, one umount2(2) each from a thread that enters the namespace:
    an `umount` program per disk (or one for all, which re-reads the mount table per disk) made
    every create slower by a millisecond or more per devbox on the host. Blocking: call it from a
    worker thread, once the launch has mounted (and before bubblewrap, which reads the mount table
    once per bind).
    """
    ns_path = f"/proc/{pid}/ns/mnt"
    if os.stat(ns_path).st_ino == os.stat("/proc/self/ns/mnt").st_ino:
        raise OSError(f"process {pid} is not in a mount namespace of its own")  # never the host's mounts
    keep = (os.fsencode(LAUNCH_DIR), os.fsencode(own_disk) if own_disk is not None else None)
    targets = []
    with open(f"/proc/{pid}/mounts", "rb") as fh:
        for line in fh:
            source, target = line.split(b" ", 2)[:2]
            target = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), target)
            if source.startswith(b"/dev/loop") and not any(
                k is not None and (target == k or target.startswith(k + b"/")) for k in keep
            ):
                targets.append(target)
    if not targets:
        return 0
    failure: list[OSError] = []

    def detach() -> None:  # in a thread of its own: setns moves only the calling thread, for good
        libc = ctypes.CDLL(None, use_errno=True)
        ns = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.unshare(_CLONE_FS) != 0 or libc.setns(ns, _CLONE_NEWNS) != 0:
                code = ctypes.get_errno()
                failure.append(OSError(code, f"cannot enter the launch's mount namespace: {os.strerror(code)}"))
                return
        finally:
            os.close(ns)
        for target in reversed(targets):  # the innermost first; one already gone with its parent is no error
            libc.umount2(target, _MNT_DETACH)

    thread = threading.Thread(target=detach, name=f"devbox-launch-{pid}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return len(targets)


def _fstab(path: Path) -> str:
    """A path as an fstab field (octal escapes for what would split or end it)."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\#" else c for c in str(path))


def host_file(index: int, path: Path) -> str:
    """Where bubblewrap finds `path`, a file of the `index`th of `fstab`'s `host_dirs`."""
    return f"{LAUNCH_DIR}/host-files-{index}/{path.name}"


def bind_args(user_home: str) -> list[str]:
    """bubblewrap's binds of what the launch script mounted: the system first, then home and /tmp."""
    return [
        "--bind", f"{LAUNCH_DIR}/root", "/",
        "--bind", f"{LAUNCH_DIR}/home", user_home,
        "--bind", f"{LAUNCH_DIR}/tmp", "/tmp",
    ]  # fmt: skip


def prepare_first_boot(layers: RootFs, ids: IdRange, home: Path, tmp: Path, uid: int) -> None:
    """Before a devbox first runs: its layer directories, a /tmp for everyone, a home from /etc/skel."""
    layers.prepare(ids)
    os.chown(tmp, ids.host_uid(0), ids.host_gid(0))
    os.chmod(tmp, 0o1777)
    seed_home(home, layers.image, ids.host_uid(uid), ids.host_gid(uid))


def give_tree(path: Path, uid: int, gid: int) -> None:
    """Make `path` and everything under it (written by the backend, before the devbox ran) the devbox user's."""
    os.lchown(path, uid, gid)
    for directory, subdirs, names, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in subdirs + names:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        del directory


def seed_home(home: Path, image: Path, uid: int, gid: int) -> None:
    """Fill a new home with the image's /etc/skel (.bashrc, .profile), as useradd would have."""
    skel = image / "etc" / "skel"
    if skel.is_dir() and not skel.is_symlink():
        for entry in skel.iterdir():
            if entry.is_file() and not entry.is_symlink() and not (home / entry.name).exists():
                shutil.copyfile(entry, home / entry.name)
    give_tree(home, uid, gid)
