"""The unprivileged uid/gid range devbox ids map to on the host, when the backend runs as root.

Inside a devbox, ids 0..65535 are ordinary Linux ids (root is 0, `user` is 1000); on the host
they are `base + id`, ids no host account owns. So a devbox's root, and everything it starts,
is an unprivileged host user: the kernel, not the mount list, keeps it away from the host.

One range serves every devbox of the machine (the devbox image's files are owned by it, and
each devbox's changes are an overlay on that image); devboxes stay apart through their own
pid, mount, ipc, uts and network namespaces and their private directories, not through ids.

Where the range comes from, first match wins:
1. an entry for the name `devbox-mcp` in /etc/subuid and /etc/subgid (the administrator's choice);
2. the range recorded by an earlier choice (`id-range` next to the images);
3. the top 65,536 ids of the range systemd reserves for containers (0x00080000-0x6FFFFFFF),
   moved down block by block past any /etc/subuid, /etc/subgid, passwd or group id it overlaps,
   then recorded so that it never changes under existing devboxes.

A backend that is not root cannot choose ids: the kernel lets it map only its own uid, unless
the administrator gave its user a subordinate range (/etc/subuid and /etc/subgid, as `useradd`
does) and the setuid helpers newuidmap/newgidmap (package `uidmap`) are installed. Then
(`SubordinateMap`) devbox ids 0..65535 are real too: uid 1000, `user`, is the backend's own uid
(so the devbox's home and /tmp stay its files), every other id is one of its subordinate ids. The
devbox still runs on the host's system, read-only: an image owned by a range, mounted as an overlay,
needs a root backend. Without a range it falls back to the single mapping (`FALLBACK_NOTE`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("devbox_mcp.local")

RANGE_SIZE = 65536
SUBORDINATE_NAME = "devbox-mcp"
DEFAULT_BASE = 0x70000000 - RANGE_SIZE  # the top block of systemd's container range
_LOWEST_BASE = 0x00080000


@dataclass(frozen=True)
class IdRange:
    """Host uids `uid_base..uid_base+count-1` (and gids likewise) are ids `0..count-1` in a devbox."""

    uid_base: int
    gid_base: int
    count: int = RANGE_SIZE

    def host_uid(self, inside: int) -> int:
        return self.uid_base + inside

    def host_gid(self, inside: int) -> int:
        return self.gid_base + inside

    def holds_uid(self, host_uid: int) -> bool:
        return self.uid_base <= host_uid < self.uid_base + self.count

    @property
    def uid_map(self) -> str:
        return f"0 {self.uid_base} {self.count}\n"

    @property
    def gid_map(self) -> str:
        return f"0 {self.gid_base} {self.count}\n"


def _entries(path: str) -> list[tuple[str, int, int]]:
    """name:start:count lines of /etc/subuid or /etc/subgid."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                found.append((parts[0], int(parts[1]), int(parts[2])))
    return found


def _account_ids(path: str) -> set[int]:
    ids = set()
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isdigit():
                ids.add(int(parts[2]))
    return ids


def _configured() -> IdRange | None:
    uids = [(s, c) for name, s, c in _entries("/etc/subuid") if name == SUBORDINATE_NAME and c >= RANGE_SIZE]
    gids = [(s, c) for name, s, c in _entries("/etc/subgid") if name == SUBORDINATE_NAME and c >= RANGE_SIZE]
    if uids and gids:
        return IdRange(uids[0][0], gids[0][0])
    return None


def _free_base() -> int:
    """The highest 65,536-aligned block at or below DEFAULT_BASE that no account or other range uses."""
    taken = [(s, c) for _n, s, c in _entries("/etc/subuid") + _entries("/etc/subgid")]
    accounts = _account_ids("/etc/passwd") | _account_ids("/etc/group")
    base = DEFAULT_BASE
    while base >= _LOWEST_BASE:
        end = base + RANGE_SIZE
        if not any(s < end and base < s + c for s, c in taken) and not any(base <= i < end for i in accounts):
            return base
        base -= RANGE_SIZE
    raise RuntimeError("no free block of 65,536 ids for devboxes; add a `devbox-mcp` entry to /etc/subuid and /etc/subgid")


def host_range(record_dir: Path) -> IdRange | None:
    """The range devboxes map to, or None when the backend is not root (see `fallback_note`)."""
    if os.geteuid() != 0:
        return None
    configured = _configured()
    if configured is not None:
        return configured
    record = record_dir / "id-range"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(record.read_text())
        return IdRange(int(data["uid_base"]), int(data["gid_base"]), int(data["count"]))
    base = _free_base()
    chosen = IdRange(base, base)
    record_dir.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".id-range.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"uid_base": base, "gid_base": base, "count": RANGE_SIZE}) + "\n")
    os.replace(tmp, record)
    log.info("devbox ids map to host ids %d-%d (recorded in %s)", base, base + RANGE_SIZE - 1, record)
    return chosen


FALLBACK_NOTE = (
    "the backend is not root, so devboxes map only its own uid (uid 1000 inside): the host's /usr is "
    "read-only in them and they have no sudo or apt; run the backend as root for devboxes with a "
    "writable system (see the README, 'What a devbox is')"
)
SUBORDINATE_NOTE = (
    "the backend is not root: devbox ids 0-65535 map to its subordinate ids {uid_first}-{uid_last} "
    "(/etc/subuid; gids {gid_first}-{gid_last}), uid 1000 (`user`) to its own uid {uid}; devboxes "
    "run on the host's system, read-only, without sudo or apt (a system of their own needs a root backend)"
)
_USER_ID = 1000  # `user` inside: the backend's own uid
_HELPERS = {"uid": "newuidmap", "gid": "newgidmap"}


def _helper(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join(["/usr/bin", "/bin", os.environ.get("PATH", "")]))


@dataclass(frozen=True)
class SubordinateMap:
    """A non-root backend's devbox ids: 1000 is its own id, 0..999 and 1001..65535 its subordinate ids."""

    uid: int
    gid: int
    sub_uid: int  # first of RANGE_SIZE - 1 subordinate uids
    sub_gid: int

    def helper_args(self, kind: str) -> list[str]:
        """newuidmap's (kind "uid") or newgidmap's ("gid") triples, after the pid."""
        own, sub = (self.uid, self.sub_uid) if kind == "uid" else (self.gid, self.sub_gid)
        rest = RANGE_SIZE - _USER_ID - 1
        triples = [(0, sub, _USER_ID), (_USER_ID, own, 1), (_USER_ID + 1, sub + _USER_ID, rest)]
        return [str(n) for triple in triples for n in triple]

    @property
    def note(self) -> str:
        last = RANGE_SIZE - 2
        return SUBORDINATE_NOTE.format(uid_first=self.sub_uid, uid_last=self.sub_uid + last,
                                       gid_first=self.sub_gid, gid_last=self.sub_gid + last, uid=self.uid)  # fmt: skip

    def write(self, pid: int) -> None:
        """Map the user namespace of `pid` through the setuid helpers (the kernel checks /etc/sub[ug]id)."""
        for kind, helper in _HELPERS.items():
            result = subprocess.run(
                [_helper(helper) or helper, str(pid), *self.helper_args(kind)],
                capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if result.returncode != 0:
                why = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
                raise OSError(f"{helper} could not map the devbox's ids: {why}")


def subordinate_map() -> tuple[SubordinateMap | None, str]:
    """For a backend that is not root: its subordinate map, or None and why there is none."""
    uid, gid = os.getuid(), os.getgid()
    try:
        label = pwd.getpwuid(uid).pw_name
    except KeyError:
        label = str(uid)
    names = {label, str(uid)}  # /etc/subuid names an account or a uid
    needed = RANGE_SIZE - 1
    uids = [s for n, s, c in _entries("/etc/subuid") if n in names and c >= needed]
    gids = [s for n, s, c in _entries("/etc/subgid") if n in names and c >= needed]
    if not uids or not gids:
        return None, (f"no range of {needed} ids for {label} in /etc/subuid and /etc/subgid "
                      "(`usermod --add-subuids/--add-subgids` adds one)")  # fmt: skip
    missing = [h for h in _HELPERS.values() if not _helper(h)]
    if missing:
        return None, f"{' and '.join(missing)} not installed (`apt-get install uidmap`)"
    return SubordinateMap(uid, gid, uids[0], gids[0]), ""


def write_maps(pid: int, ids: IdRange) -> None:
    """Map the user namespace of `pid`; setgroups stays allowed (sudo and apt need it inside)."""
    with open(f"/proc/{pid}/uid_map", "w") as fh:
        fh.write(ids.uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as fh:
        fh.write(ids.gid_map)


# -- moving a tree built with real ids into the range ------------------------------------------------

_CAPS_XATTR = "security.capability"
_VFS_CAP_REVISION_2 = 0x02000000
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_REVISION_MASK = 0xFF000000


def _caps_for_range(value: bytes, root_uid: int) -> bytes | None:
    """A v2 file-capability xattr as v3 owned by the range's root (v2 only counts for the host's root)."""
    if len(value) < 20:
        return None
    (magic,) = struct.unpack_from("<I", value)
    if magic & _VFS_CAP_REVISION_MASK not in (_VFS_CAP_REVISION_2, _VFS_CAP_REVISION_3):
        return None
    flags = magic & ~_VFS_CAP_REVISION_MASK
    return struct.pack("<I", _VFS_CAP_REVISION_3 | flags) + value[4:20] + struct.pack("<I", root_uid)


def shift_tree(root: Path, ids: IdRange) -> int:
    """Give every file under `root` (built with real ids 0..65535) the range's ids; returns the count.

    Hard links are shifted once. chown clears setuid/setgid bits and file capabilities, so the
    mode is set again and capabilities are rewritten for the range's root. Never follows symlinks.
    """
    seen: set[tuple[int, int]] = set()

    def shift(path: str) -> None:
        st = os.lstat(path)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        if st.st_uid >= ids.count or st.st_gid >= ids.count:
            raise RuntimeError(f"{path} is owned by {st.st_uid}:{st.st_gid}, outside 0..{ids.count - 1}")
        caps = None
        if stat.S_ISREG(st.st_mode):
            with contextlib.suppress(OSError):
                caps = os.getxattr(path, _CAPS_XATTR, follow_symlinks=False)
        os.lchown(path, ids.host_uid(st.st_uid), ids.host_gid(st.st_gid))
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        if caps is not None:
            shifted = _caps_for_range(caps, ids.host_uid(0))
            if shifted is not None:
                os.setxattr(path, _CAPS_XATTR, shifted, follow_symlinks=False)

    shift(str(root))
    for directory, subdirs, names in os.walk(root):
        for name in subdirs + names:
            shift(os.path.join(directory, name))
    return len(seen)
