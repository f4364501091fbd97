"""The sandbox a devbox runs in: one long-lived bubblewrap container per running devbox.

Executions do not get a sandbox of their own: they are started inside the devbox's namespaces
by its fork server (`forkclient`, a helper that entered them once), or with `nsenter` when it is
unavailable, so files, processes and servers persist between them as on a real devbox, and each
one costs a process spawn instead of a container start.

Two kinds, chosen by the spec:

- A system of its own (`spec.rootfs` and `spec.ids`, when the backend is root): the devbox
  image under a writable layer of the devbox's (see rootfs.py), ids 0..65535 mapped to an
  unprivileged host range (idmap.py). Commands run as the devbox's user (`user`, uid 1000, or
  root on request) and `sudo` works, yet no devbox process is host root, and nothing of the
  host's file system is mounted.
- The host's system (a backend that is not root): the user is uid 1000 `user` with no
  capabilities and no sudo; on the host it is the backend's own uid. bubblewrap alone can map
  only that one; with the user's subordinate range (`spec.user_map`, idmap.SubordinateMap) the
  backend maps the other ids to it through newuidmap/newgidmap. The mount list is the boundary: system directories
  read-only, host secrets masked (the known ones and anything in /etc that is not
  world-readable), every kernel knob in /proc read-only, nothing else of the host mounted.

Every process in the sandbox runs under the seccomp filter of `seccomp`: the first one gets it
from bubblewrap (`--seccomp`), executions from the thread that forks their fork server or
`nsenter` (`spawner`). On the host's system they also run with `no_new_privs`; on a system of their own
they do not (setuid programs such as sudo need it off, and raise a process only to the devbox's
root, an unprivileged id on the host), and the filter lets root inside mount and make user
namespaces and setuid files in its own namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import cgroups, rootfs, seccomp, spawner
from .childwatch import end_process
from .egress import UPLINK_DNS
from .forkclient import Entry, ForkServer, ForkServerUnavailable
from .idmap import IdRange, SubordinateMap, write_maps

log = logging.getLogger("devbox_mcp.local")

NetworkMode = Literal["isolated", "none", "host"]
NETWORK_MODES: tuple[str, ...] = ("isolated", "none", "host")

SANDBOX_UID = 1000
SANDBOX_HOME = "/home/user"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Everything an execution sees unless the caller overrides it: nothing may wait for a human.
NON_INTERACTIVE_ENV: dict[str, str] = {
    "HOME": SANDBOX_HOME,
    "USER": "user",
    "LOGNAME": "user",
    "SHELL": "/bin/bash",
    "PATH": SANDBOX_PATH,
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_EDITOR": "true",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "PIP_NO_INPUT": "1",
    # /usr is read-only, so a plain `pip install` can only land in ~/.local: let it, PEP 668 or not.
    "PIP_BREAK_SYSTEM_PACKAGES": "1",
    "NPM_CONFIG_YES": "true",
    "CI": "true",
}
# What a terminal session (pty.py) drops of that: a person answers there, and `git rebase -i`
# must open an editor. It gets TERM=xterm-256color instead of `dumb`.
_NON_INTERACTIVE_ONLY = (
    "DEBIAN_FRONTEND", "GIT_TERMINAL_PROMPT", "GIT_EDITOR", "GIT_SSH_COMMAND", "PAGER", "GIT_PAGER",
    "PIP_NO_INPUT", "NPM_CONFIG_YES", "CI",
)  # fmt: skip

# Host files a sandbox must never read (for a root backend the sandbox user owns them: masks, not permissions, guard them).
_SECRET_FILES = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/security/opasswd",
)
_SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d")
# Generated per sandbox (a `user` account, the devbox's own identity and DNS).
_GENERATED = (
    "/etc/passwd",
    "/etc/group",
    "/etc/hostname",
    "/etc/machine-id",
    "/etc/resolv.conf",
    "/etc/hosts",
)

# The sandbox's resident process; bwrap is pid 1 and reaps orphans. "ready" means the mounts are
# done. It lives until its stdin, a pipe only the backend can write to, ends: when the backend
# dies, however it dies, the resident exits, so does bwrap, and with it everything in the sandbox.
_INIT_COMMAND = ("/bin/sh", "-c", "echo ready; exec >/dev/null 2>&1; read -r _; exit 0")

# Runs a sandbox's process after writing its own pid into each cgroup.procs file given before `--`,
# so that it (and whatever it starts) is inside the devbox's cgroups before it execs anything; with
# a process limit first ($1, or -), which `ulimit -u` then reports (`-p` is dash's name for it).
_JOIN_CGROUPS = (
    '[ "$1" = - ] || ulimit -u "$1" 2>/dev/null || ulimit -p "$1" || exit 125; shift; '
    'while [ "$1" != -- ]; do echo $$ >"$1" || exit 125; shift; done; shift; exec "$@"'
)

INSTALL_HINT = (
    "bubblewrap (bwrap) is needed to sandbox devboxes: install it with `apt-get install bubblewrap` "
    "(or your distribution's package), or start the backend with --unsafe-no-sandbox to run commands "
    "as plain host processes without isolation"
)


class SandboxError(Exception):
    """The sandbox could not start or is gone; the message says why."""


@dataclass(frozen=True)
class SandboxUser:
    """Who commands run as inside: `user` by default, root or another account on request."""

    name: str = "user"
    uid: int = SANDBOX_UID
    home: str = SANDBOX_HOME


DEFAULT_USER = SandboxUser()
ROOT_USER = SandboxUser("root", 0, "/root")


@dataclass(frozen=True)
class SandboxSpec:
    home: Path  # host directory mounted at the user's home
    tmp: Path  # host directory mounted at /tmp
    hostname: str
    network: NetworkMode = "isolated"
    unsafe: bool = False  # no sandbox at all: plain host processes in `home`
    rootfs: rootfs.RootFs | None = None  # a system of its own (needs `ids`); None: the host's, read-only
    ids: IdRange | None = None
    user_map: SubordinateMap | None = None  # the host's system, a backend that is not root: its subordinate ids
    user: SandboxUser = DEFAULT_USER
    # Limits (limits.py): every process joins these cgroups (their cgroup.procs files) before it
    # execs, these host files are bound over /proc files, and RAM-backed mounts get these sizes.
    cgroup_procs: tuple[str, ...] = ()
    proc_files: tuple[tuple[str, str], ...] = ()  # (/proc or /sys path, host file or directory)
    ram_disk_bytes: int | None = None  # /dev/shm, and /var on the host's system (on its own, /var is on disk)
    run_tmpfs_bytes: int | None = None  # /run
    max_processes: int | None = None  # RLIMIT_NPROC of commands (counted in the devbox's user namespace)
    # `isolated` only: the command prefix that runs its slirp4netns in the egress namespace (egress.py),
    # and whether it gets no slirp4netns at all (a network policy's proxy is its only way out).
    egress_prefix: tuple[str, ...] = ()
    proxy_only: bool = False


def _which(name: str) -> str | None:
    for base in ("/usr/bin", "/usr/sbin", "/bin", "/sbin"):
        path = os.path.join(base, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


@functools.cache
def tools() -> dict[str, str | None]:
    return {
        name: _which(name) for name in ("bwrap", "nsenter", "slirp4netns", "bash", "unshare", "setpriv", "setsid")
    }


def sandbox_unavailable_reason() -> str | None:
    """Why sandboxes cannot start on this machine (None when they can)."""
    found = tools()
    if not found["bwrap"]:
        return "bubblewrap is not installed. " + INSTALL_HINT
    if not found["nsenter"]:
        return "nsenter (util-linux) is not installed; install it with `apt-get install util-linux`"
    no_filter = seccomp.unavailable_reason()
    if no_filter:
        return no_filter
    failure = _probe(found["bwrap"])
    if failure:
        return (
            f"bubblewrap is installed but cannot create a sandbox here ({failure}); allow user namespaces "
            "(e.g. sysctl kernel.unprivileged_userns_clone=1, or run the container with --privileged), "
            "or start the backend with --unsafe-no-sandbox to run commands as plain host processes"
        )
    return None


@functools.cache
def _probe(bwrap: str) -> str | None:
    """Whether bubblewrap can create the namespaces a devbox needs (it cannot in some containers)."""
    try:
        result = subprocess.run(
            [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
             "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
             "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--", "/bin/true"],
            capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        return (
            result.stderr.decode(errors="replace").strip().splitlines()[-1:][0]
            if result.stderr
            else f"exit {result.returncode}"
        )
    return None


def warm_up() -> None:
    """Look up the tools, build the seccomp filter, scan /etc and /proc and start the spawning
    thread now, so the first devbox starts as fast as the rest."""
    if sandbox_unavailable_reason() is None:
        _etc_masks()
        _proc_read_only()
        spawner.warm_up(own_system=os.geteuid() == 0)


@functools.cache
def _etc_masks() -> tuple[list[str], list[str]]:
    """Files and directories under /etc to hide: the known secrets plus anything not world-readable."""
    files = {p for p in _SECRET_FILES if os.path.lexists(p)}
    dirs = {p for p in _SECRET_DIRS if os.path.isdir(p)}
    for root, subdirs, names in os.walk("/etc"):
        for name in list(subdirs):
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                hidden = not st.st_mode & stat.S_IROTH or not st.st_mode & stat.S_IXOTH
                if stat.S_ISDIR(st.st_mode) and hidden:
                    dirs.add(path)
                    subdirs.remove(name)
        for name in names:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
                    files.add(path)
    files -= set(_GENERATED)
    files = {f for f in files if not any(f.startswith(d + "/") for d in dirs)}
    return sorted(files), sorted(dirs)


@functools.cache
def _proc_read_only() -> list[str]:
    """/proc/sys, plus every other top-level /proc entry (not a process) holding a writable file.

    Found by looking rather than listed, so a kernel with other knobs is covered too.
    """
    found = ["/proc/sys", "/proc/sysrq-trigger"]
    for name in sorted(os.listdir("/proc")):
        path = f"/proc/{name}"
        if name.isdigit() or name in ("self", "thread-self", "sys", "sysrq-trigger"):
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if (
                stat.S_ISREG(st.st_mode)
                and st.st_mode & 0o222
                or stat.S_ISDIR(st.st_mode)
                and _has_writable(path)
            ):
                found.append(path)
    return found


def _has_writable(directory: str) -> bool:
    for root, _dirs, names in os.walk(directory):
        for name in names:
            with contextlib.suppress(OSError):
                if os.lstat(os.path.join(root, name)).st_mode & 0o222:
                    return True
    return False


def _generated_files(spec: SandboxSpec) -> dict[str, bytes]:
    if spec.rootfs is not None:
        return _identity_files(spec)
    passwd = (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"user:x:{SANDBOX_UID}:{SANDBOX_UID}:devbox user:{SANDBOX_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\nuser:x:{SANDBOX_UID}:\nnogroup:x:65534:\n"
    hosts = f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 {spec.hostname}\n"
    files = {
        "/etc/passwd": passwd.encode(),
        "/etc/group": group.encode(),
        "/etc/hostname": f"{spec.hostname}\n".encode(),
        # A per-devbox identity instead of the host's.
        "/etc/machine-id": (os.urandom(16).hex() + "\n").encode(),
        "/etc/hosts": hosts.encode(),
    }
    if spec.network == "isolated" and not spec.proxy_only:
        files["/etc/resolv.conf"] = _resolv_conf(spec)
    elif spec.network != "host":
        files["/etc/resolv.conf"] = b""
    return files


def _resolv_conf(spec: SandboxSpec) -> bytes:
    """slirp4netns's DNS forwarder, or behind the egress rules the uplink's (see egress.py)."""
    return f"nameserver {UPLINK_DNS if spec.egress_prefix else '10.0.2.3'}\n".encode()


def _identity_files(spec: SandboxSpec) -> dict[str, bytes]:
    """What a devbox with its own system gets bound over its /etc: its name, identity and DNS.

    Accounts come from the devbox's own /etc/passwd (the image's, plus what the devbox adds).
    """
    hosts = f"127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 {spec.hostname}\n"
    if spec.network == "isolated" and not spec.proxy_only:
        resolv = _resolv_conf(spec)
    elif spec.network == "host":
        try:
            resolv = Path("/etc/resolv.conf").read_bytes()
        except OSError:
            resolv = b""
    else:
        resolv = b""
    return {
        "/etc/hostname": f"{spec.hostname}\n".encode(),
        "/etc/machine-id": (os.urandom(16).hex() + "\n").encode(),
        "/etc/hosts": hosts.encode(),
        "/etc/resolv.conf": resolv,
    }


def _sized(size: int | None) -> list[str]:
    return ["--size", str(size)] if size else []


def _host_file_folders(spec: SandboxSpec) -> list[Path]:
    """The host directories of `spec.proc_files`, each once: one bind each into a devbox with its own system."""
    return list(dict.fromkeys(Path(source).parent for _, source in spec.proc_files))


def _in_cgroups(spec: SandboxSpec, argv: Sequence[str], *, command: bool = True) -> list[str]:
    """`argv`, run inside the devbox's cgroups when it has any, with its process limit when a `command`.

    Not the sandbox itself: the limit a user namespace is created under also caps, host-wide, the
    processes of its owner (the backend's uid), which are none of the devbox's business.
    """
    nproc = str(spec.max_processes) if command and spec.max_processes else "-"
    if not spec.cgroup_procs and nproc == "-":
        return list(argv)
    return ["/bin/sh", "-c", _JOIN_CGROUPS, "sh", nproc, *spec.cgroup_procs, "--", *argv]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Sandbox:
    """One running devbox's container. `spawn` runs commands in it; `stop` kills everything in it."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self._bwrap: asyncio.subprocess.Process | None = None
        self._slirp: asyncio.subprocess.Process | None = None
        self._slirp_exit: int | None = None  # closing it makes slirp4netns exit
        self._lifeline: int | None = None  # closing it (or the backend dying) ends the sandbox
        self._network: asyncio.Future[None] | None = None  # slirp4netns coming up
        self.init_pid: int | None = None  # host pid of the sandbox's pid 1
        self._ns_names: list[str] = []  # the namespaces the sandbox has of its own
        self._helper: asyncio.Future[ForkServer | None] | None = None  # its fork server starting, or started
        self._unsafe_groups: set[int] = set()
        self._stopped = False
        self._stop_event = asyncio.Event()
        self._started = False
        self.warnings: list[str] = []  # what works less than it should in this sandbox, for the devbox's log

    @property
    def alive(self) -> bool:
        if not self._started or self._stopped:
            return False
        if self.spec.unsafe:
            return True
        return self._bwrap is not None and self._bwrap.returncode is None

    async def exited(self) -> None:
        """Return once the sandbox is gone (never, for an unsafe sandbox until it is stopped)."""
        if self._bwrap is not None:
            await self._bwrap.wait()
            return
        await self._stop_event.wait()

    # -- start -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.spec.unsafe:
            return
        reason = sandbox_unavailable_reason()
        if reason:
            raise SandboxError(reason)
        starting = asyncio.ensure_future(self._start_bwrap())
        try:
            # Shielded: asyncio cannot clean up a subprocess cancelled while it is being created
            # (it waits for it to exit, and a sandbox never does), so a cancelled start finishes
            # starting first and is then stopped.
            await asyncio.shield(starting)
            if self.spec.network == "isolated" and not self.spec.proxy_only and tools()["slirp4netns"]:
                self._network = asyncio.ensure_future(self._start_slirp())
            self._helper = asyncio.ensure_future(self._start_helper())
        except BaseException:
            with contextlib.suppress(BaseException):
                await starting
            await self.stop()
            raise

    def _bwrap_args(self, fds: dict[str, int]) -> list[str]:
        spec = self.spec
        args = [
            "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            # The backend maps the namespace (newuidmap) while bubblewrap waits.
            *(["--userns-block-fd", str(fds["block"])] if spec.user_map else []),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", spec.hostname,
            "--die-with-parent",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc",
        ]  # fmt: skip
        # The sandbox user is the host's uid without capabilities: kernel knobs in /proc that only
        # check the owner (sysctls, pressure triggers) must be read-only.
        for path in _proc_read_only():
            args += ["--ro-bind-try", path, path]
        for path, source in spec.proc_files:  # e.g. a /proc/meminfo of the devbox's size, its /sys
            args += ["--ro-bind", source, path]
        args += [
            "--ro-bind", "/etc", "/etc",
        ]  # fmt: skip
        if spec.network != "host":
            args.append("--unshare-net")
        if os.geteuid() == 0:
            args += ["--dev", "/dev", "--disable-userns"]  # no user namespaces inside
            # /dev is a tmpfs the devbox user owns: keep it read-only, with a sized /dev/shm.
            args += [*_sized(spec.ram_disk_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
        else:
            # Without root, `--dev` and `--disable-userns` make bubblewrap nest the sandbox's user
            # namespace, and an unprivileged nsenter could then not enter the other namespaces.
            args += [*_MINIMAL_DEV, *_sized(spec.ram_disk_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
        # Masks read as "Permission denied": an empty mode-000 file or directory on a read-only mount.
        files, dirs = _etc_masks()
        for path in files:
            args += ["--perms", "000", "--ro-bind-data", str(fds[f"mask:{path}"]), path]
        for path in dirs:
            args += ["--perms", "000", "--tmpfs", path, "--remount-ro", path]
        for path, fd in fds.items():
            if path.startswith("/etc/"):  # generated files
                args += ["--ro-bind-data", str(fd), path]
        args += [
            "--bind-fd", str(fds["home"]), SANDBOX_HOME,
            "--bind-fd", str(fds["tmp"]), "/tmp",
            *_sized(spec.ram_disk_bytes), "--tmpfs", "/var", "--bind-fd", str(fds["vartmp"]), "/var/tmp",
            *_sized(spec.run_tmpfs_bytes), "--tmpfs", "/run",
            "--remount-ro", "/",  # the sandbox's root tmpfs: nothing to write outside home and tmp
            "--chdir", SANDBOX_HOME,
            "--setenv", "HOME", SANDBOX_HOME,
            "--info-fd", str(fds["info"]),
            "--seccomp", str(fds["seccomp"]),
        ]  # fmt: skip
        return args

    def _system_bwrap_args(self, fds: dict[str, int]) -> list[str]:
        """bubblewrap's arguments for a devbox with its own system (`/` is bound by the launch script)."""
        spec = self.spec
        args = [
            "--unshare-user", "--userns-block-fd", str(fds["block"]),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", spec.hostname,
            "--die-with-parent",
            *rootfs.bind_args(spec.user.home),
            "--proc", "/proc",
        ]  # fmt: skip
        for path in _proc_read_only():  # the kernel already refuses the range's ids; belt and braces
            args += ["--ro-bind-try", path, path]
        folders = _host_file_folders(spec)
        for path, source in spec.proc_files:  # e.g. a /proc/meminfo of the devbox's size, its /sys
            args += ["--ro-bind", rootfs.host_file(folders.index(Path(source).parent), Path(source)), path]
        if spec.network != "host":
            args.append("--unshare-net")
        # /dev/shm for everyone (as on any machine), sized; /var is on the devbox's disk, in its system.
        args += ["--dev", "/dev", "--perms", "1777", *_sized(spec.ram_disk_bytes), "--tmpfs", "/dev/shm"]
        for path, fd in fds.items():
            if path.startswith("/etc/"):  # generated files, readable by everyone as on any machine
                args += ["--perms", "0644", "--ro-bind-data", str(fd), path]
        args += [
            *_sized(spec.run_tmpfs_bytes), "--tmpfs", "/run",
            "--chdir", spec.user.home,
            "--setenv", "HOME", spec.user.home,
            # Only for the resident process's remount of / (the devbox's own namespace's capability).
            "--cap-add", "CAP_SYS_ADMIN",
            "--info-fd", str(fds["info"]),
            "--seccomp", str(fds["seccomp"]),
        ]  # fmt: skip
        return args

    async def _start_bwrap(self) -> None:
        spec = self.spec
        own_system = spec.rootfs is not None
        if own_system and spec.ids is None:
            raise SandboxError("a devbox with a system of its own needs an id range")
        fds: dict[str, int] = {}
        info_r, info_w = os.pipe()
        block_w: int | None = None
        gate_w: int | None = None  # a system of its own: the launch waits on it until it is in the cgroups
        try:
            fds["info"] = info_w
            fds["seccomp"] = seccomp.memfd(own_system=own_system)
            for path, data in _generated_files(spec).items():
                fds[path] = _memfd(os.path.basename(path), data)
            if own_system:
                assert spec.rootfs is not None and spec.ids is not None
                fds["block"], block_w = os.pipe()
                args = self._system_bwrap_args(fds)
                init = rootfs.INIT_COMMAND
            else:
                if spec.user_map is not None:
                    fds["block"], block_w = os.pipe()
                fds["home"] = os.open(spec.home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                fds["tmp"] = os.open(spec.tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                for path in _etc_masks()[0]:
                    fds[f"mask:{path}"] = _memfd("mask", b"")
                fds["vartmp"] = os.open(
                    spec.tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
                )  # bwrap closes each fd it binds
                args = self._bwrap_args(fds)
                launch = [tools()["bwrap"] or "bwrap"]
                init = _INIT_COMMAND
            # Arguments through a memfd: the host paths stay out of the sandbox's /proc/1/cmdline.
            args_fd = _memfd("bwrap-args", b"".join(a.encode() + b"\0" for a in args))
            fds["args"] = args_fd
            lifeline_r, self._lifeline = os.pipe()  # both ends close-on-exec: no other child holds it
            fds["lifeline"] = lifeline_r
            if own_system:
                assert spec.rootfs is not None and spec.ids is not None
                fds["fstab"] = os.memfd_create("fstab", 0)
                fds["gate"], gate_w = os.pipe()
                launch_fds = rootfs.LaunchFds.around(fds["fstab"], fds["gate"], set(fds.values()))
                os.write(fds["fstab"], rootfs.fstab(spec.home, spec.tmp, launch_fds, _host_file_folders(spec)))
                launch = rootfs.launch_command(
                    unshare=tools()["unshare"] or "unshare", bash=tools()["bash"] or "bash",
                    setpriv=tools()["setpriv"] or "setpriv", bwrap=tools()["bwrap"] or "bwrap", ids=spec.ids,
                    layers=spec.rootfs, fds=launch_fds,
                )  # fmt: skip
            command = [*launch, "--args", str(args_fd), "--", *init]
            self._bwrap = await asyncio.create_subprocess_exec(
                # A system of its own: the backend moves the launch into the cgroups while it mounts.
                *(command if own_system else _in_cgroups(spec, command, command=False)),
                stdin=lifeline_r,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=list(fds.values()),
                env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"},
            )
        except BaseException:
            for fd in (info_r, block_w, gate_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in fds.values():
                os.close(fd)
        try:
            assert self._bwrap.stdout is not None and self._bwrap.stderr is not None
            if own_system:
                assert gate_w is not None
                await self._prepare_launch()
                os.write(gate_w, b"1\n")
            if block_w is not None:
                # bubblewrap waits for the id map before it goes on: the pid comes first.
                info = await self._read_info_or_fail(info_r)
                if spec.ids is not None:
                    write_maps(int(info["child-pid"]), spec.ids)
                else:
                    assert spec.user_map is not None
                    await asyncio.to_thread(spec.user_map.write, int(info["child-pid"]))
                os.write(block_w, b"1")
            ready = await asyncio.wait_for(self._bwrap.stdout.readline(), timeout=20)
            if ready not in (b"ready\n", b"ready-nosuid\n"):
                raise SandboxError(f"the sandbox failed to start: {await self._stderr_text()}")
            if ready == b"ready-nosuid\n":
                self.warnings.append(rootfs.NOSUID_WARNING)
            if block_w is None:
                info = await _read_json_fd(info_r, 5)
            self.init_pid = int(info["child-pid"])
            self._ns_names = _own_namespaces(self.init_pid)
        finally:
            for fd in (info_r, block_w, gate_w):
                if fd is not None:
                    with contextlib.suppress(OSError):  # the gate may be closed already
                        os.close(fd)

    async def _prepare_launch(self) -> None:
        """While the launch of a system of its own mounts: move it into the devbox's cgroups, and once it
        has mounted (it says so, then waits at its gate), detach other devboxes' disks from its copy of
        the host's mounts, so that bubblewrap starts on a short mount table. SandboxError if it failed.

        The cgroups in a worker thread from the start: the kernel makes the first move wait for a grace
        period (see `cgroups.join`), which would otherwise come first on the way to running.
        """
        assert self._bwrap is not None and self._bwrap.stdout is not None
        joining = (
            asyncio.ensure_future(asyncio.to_thread(cgroups.join, self.spec.cgroup_procs, self._bwrap.pid))
            if self.spec.cgroup_procs else None
        )  # fmt: skip
        try:
            mounted = await asyncio.wait_for(self._bwrap.stdout.readline(), timeout=20)
            if mounted != b"mounted\n":
                raise SandboxError(f"the sandbox failed to start: {await self._stderr_text()}")
            await self._detach_foreign_disks()
            if joining is not None:
                try:
                    await joining
                except OSError as exc:
                    raise SandboxError(
                        f"the sandbox could not join its cgroups ({exc.strerror or exc}): {await self._stderr_text()}"
                    ) from None
        finally:
            if joining is not None:
                if not joining.done():
                    await asyncio.wait({joining})  # a thread cannot be cancelled
                if not joining.cancelled():
                    joining.exception()  # seen: once the launch has failed, the join's failure does not matter

    async def _detach_foreign_disks(self) -> None:
        """Other devboxes' disks out of the launch's copy of the host's mounts (rootfs.detach_foreign_disks)."""
        assert self._bwrap is not None
        try:
            # The home's parent: the devbox's own disk, when it has one (the launch's binds hold it).
            await asyncio.to_thread(rootfs.detach_foreign_disks, self._bwrap.pid, self.spec.home.parent)
        except (OSError, ValueError) as exc:
            log.warning("sandbox %s: could not detach other devboxes' disks from its launch: %s", self.spec.hostname, exc)

    async def _stderr_text(self) -> str:
        assert self._bwrap is not None and self._bwrap.stderr is not None
        try:
            err = await asyncio.wait_for(self._bwrap.stderr.read(), timeout=5)
        except TimeoutError:
            return "no output"
        return err.decode(errors="replace").strip() or "no output"

    async def _read_info_or_fail(self, info_r: int) -> dict[str, object]:
        try:
            return await _read_json_fd(info_r, 20)
        except (SandboxError, TimeoutError):
            raise SandboxError(f"the sandbox failed to start: {await self._stderr_text()}") from None

    async def _start_slirp(self) -> None:
        """Outbound network for an isolated sandbox, with the host's loopback out of reach, and run
        in the egress namespace (`spec.egress_prefix`, egress.py) so that only public addresses are.

        Runs beside the start (commands wait for it in `spawn`), so it adds nothing to
        create→running. slirp4netns exits when `_slirp_exit` closes, even if the backend dies.
        """
        assert self.init_pid is not None
        ready_r, ready_w = os.pipe()
        exit_r, self._slirp_exit = os.pipe()
        try:
            self._slirp = await asyncio.create_subprocess_exec(
                *self.spec.egress_prefix,
                tools()["slirp4netns"] or "slirp4netns",
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                *(["--disable-dns"] if self.spec.egress_prefix else []),
                "--ready-fd",
                str(ready_w),
                "--exit-fd",
                str(exit_r),
                *_slirp_target(self.init_pid),
                "tap0",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=[ready_w, exit_r],
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            await _read_some(ready_r, 10)
        except (TimeoutError, OSError) as exc:
            log.warning("slirp4netns did not bring up the network of sandbox %s: %s", self.spec.hostname, exc)
        finally:
            os.close(ready_r)

    async def _start_helper(self) -> ForkServer | None:
        """The fork server (`forkclient`), beside the start like slirp4netns; None, logged, if it fails."""
        assert self.init_pid is not None
        spec = self.spec
        entry = Entry(
            self.init_pid, tuple(self._ns_names), own_ids=spec.ids is not None,
            cgroup_procs=spec.cgroup_procs, max_processes=spec.max_processes,
        )  # fmt: skip
        try:
            return await ForkServer.start(
                entry, own_system=spec.ids is not None, name=spec.hostname, stopping=self._stop_event
            )
        except (ForkServerUnavailable, OSError) as exc:  # e.g. no interpreter to run it: nsenter still works
            if not self._stopped:
                log.warning("sandbox %s: %s; commands enter it with nsenter", spec.hostname, exc)
            return None

    async def fork_server(self) -> ForkServer | None:
        """The fork server once it has started, if it is still in use."""
        if self._helper is None:
            return None
        if not self._helper.done():
            await asyncio.wait({self._helper})  # neither cancels it nor raises its failure
        helper = self._helper.result()
        return helper if helper is not None and not helper.dead else None

    # -- run -------------------------------------------------------------------------------

    def command_env(
        self, env: Mapping[str, str], user: SandboxUser | None = None, *, terminal: bool = False
    ) -> dict[str, str]:
        merged = dict(NON_INTERACTIVE_ENV)
        if terminal:
            for name in _NON_INTERACTIVE_ONLY:
                del merged[name]
            merged["TERM"] = "xterm-256color"
        user = user or self.spec.user
        merged.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
        if self.spec.unsafe:
            merged["HOME"] = str(self.spec.home)
            merged["PATH"] = os.environ.get("PATH", SANDBOX_PATH)
        merged.update(env)
        return merged

    async def spawn(
        self,
        command: str,
        *,
        env: Mapping[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
        args: Sequence[str] = (),
        user: SandboxUser | None = None,
        terminal: bool = False,
    ) -> asyncio.subprocess.Process:
        """Run `bash -c command` in the user's home inside the sandbox, as the leader of a new process group.

        `os.killpg(proc.pid, sig)` reaches the command and everything it started in the
        background (they stay in its group: non-interactive bash has no job control).
        `args` become the script's positional parameters ($1, $2, ...). `user` (a devbox with a
        system of its own only) runs it as another account than the devbox's.

        `terminal`: stdin is the slave of a pty (pty.py), which becomes the controlling terminal
        of a new session (`setsid --ctty`, forked under the returned process, which waits for it),
        so the shell has job control and the pty's signals (^C, SIGWINCH, hang-up) reach it; the
        environment is an interactive one (`command_env(terminal=True)`).
        """
        if user is not None and self.spec.ids is None and user != self.spec.user:
            raise SandboxError("only a devbox with a system of its own runs commands as another user")
        if not self.alive:
            raise SandboxError("the devbox's sandbox is not running")
        if self._network is not None and not self._network.done():
            await asyncio.wait({self._network})  # neither cancels it nor raises its failure
        creating = asyncio.ensure_future(
            self._create_process(
                command, args, self.command_env(env, user, terminal=terminal), stdin, stdout, stderr, user, terminal
            )
        )
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            # Same reason as in `start`: let the creation finish, then kill what it made.
            with contextlib.suppress(BaseException):
                proc = await creating
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            raise

    async def _create_process(
        self,
        command: str,
        args: Sequence[str],
        full_env: dict[str, str],
        stdin: int,
        stdout: int,
        stderr: int,
        user: SandboxUser | None = None,
        terminal: bool = False,
    ) -> asyncio.subprocess.Process:
        # A new session with the pty as its controlling terminal; forks (we already lead a session) and waits.
        ctty = [tools()["setsid"] or "setsid", "--wait", "--ctty"] if terminal else []
        if self.spec.unsafe:
            proc = await asyncio.create_subprocess_exec(
                *_in_cgroups(self.spec, [*ctty, tools()["bash"] or "/bin/bash", "-c", command, "bash", *args]),
                stdin=stdin, stdout=stdout, stderr=stderr, env=full_env,
                cwd=self.spec.home, start_new_session=True,
            )  # fmt: skip
            self._unsafe_groups.add(proc.pid)
            return proc
        assert self.init_pid is not None
        own_system = self.spec.ids is not None
        helper = None if terminal else await self.fork_server()
        if helper is not None:
            try:
                return await helper.spawn(
                    ["/bin/bash", "-c", command, "bash", *args], env=full_env, stdin=stdin, stdout=stdout, stderr=stderr,
                    uid=(user or self.spec.user).uid if own_system else None,
                )  # fmt: skip
            except ForkServerUnavailable:
                pass  # this one enters with nsenter (the fork server logs it once if it is gone)
        if own_system:
            # The devbox's user, through the id map: an unprivileged uid on the host. Capabilities
            # go at the exec (for root inside: its namespace's only); sudo works (no no_new_privs).
            uid = (user or self.spec.user).uid
            credentials = ["-S", str(uid), "-G", str(uid)]
        else:
            # The backend's uid is the one bubblewrap mapped to uid 1000: keep it (no setgroups,
            # which an unprivileged user namespace forbids). Capabilities go at the exec.
            credentials = ["--preserve-credentials"]
        return await spawner.spawn(
            _in_cgroups(self.spec, [
                *ctty,
                tools()["nsenter"] or "nsenter",
                "-t", str(self.init_pid),
                *(flag for flag, name in _NAMESPACES if name in self._ns_names), "-r", "-w",
                *credentials,
                "--", "/bin/bash", "-c", command, "bash", *args,
            ]),
            own_system=own_system,
            stdin=stdin, stdout=stdout, stderr=stderr, env=full_env,
        )  # fmt: skip

    # -- stop ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Kill everything in the sandbox and wait until it is gone."""
        self._stopped = True
        self._stop_event.set()
        for pgid in self._unsafe_groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        self._unsafe_groups.clear()
        if self._helper is not None and self._helper.done() and (helper := self._helper.result()) is not None:
            helper.close()  # first: its end is no news now
        if self.init_pid is not None:
            # Killing pid 1 of the sandbox makes the kernel kill every process in its pid namespace.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._network is not None and not self._network.done():
            self._network.cancel()
            with contextlib.suppress(BaseException):
                await self._network
        if self._slirp_exit is not None:
            os.close(self._slirp_exit)  # slirp4netns exits on this
            self._slirp_exit = None
        if self._helper is not None:
            await asyncio.wait({self._helper})  # a start under way fails fast once pid 1 is gone
            if (helper := self._helper.result()) is not None:
                helper.close()
                await helper.ended()
        for proc in (self._bwrap, self._slirp):
            await end_process(proc)  # bwrap exits by itself once its pid 1 is gone, after reaping it


def _slirp_target(pid: int) -> list[str]:
    if os.geteuid() == 0:
        # By path, as root: joining the sandbox's (nested) user namespace first would cost the
        # right to enter its network namespace.
        return ["--netns-type=path", f"/proc/{pid}/ns/net"]
    return [
        str(pid)
    ]  # joins the sandbox's user namespace, which is what gives an unprivileged user the right


_MINIMAL_DEV = [
    "--tmpfs", "/dev",
    *[arg for node in ("null", "zero", "full", "random", "urandom", "tty") for arg in ("--dev-bind", f"/dev/{node}", f"/dev/{node}")],
    "--symlink", "/proc/self/fd", "/dev/fd",
    "--symlink", "/proc/self/fd/0", "/dev/stdin",
    "--symlink", "/proc/self/fd/1", "/dev/stdout",
    "--symlink", "/proc/self/fd/2", "/dev/stderr",
]  # fmt: skip

_NAMESPACES = (
    ("-U", "user"),
    ("-m", "mnt"),
    ("-p", "pid"),
    ("-i", "ipc"),
    ("-u", "uts"),
    ("-n", "net"),
    ("-C", "cgroup"),
)


def _own_namespaces(pid: int) -> list[str]:
    """Enter only the namespaces that differ from ours: re-entering a shared one (the host's network
    in `host` mode, a cgroup namespace bubblewrap could not unshare) needs privileges we may lack."""
    names = []
    for _flag, name in _NAMESPACES:
        try:
            if os.stat(f"/proc/{pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
                names.append(name)
        except FileNotFoundError:
            continue
    if "user" not in names:
        raise SandboxError("the sandbox has no user namespace of its own")
    return names


async def _read_some(fd: int, seconds: float) -> bytes:
    """One read from a pipe, waiting for it on the event loop (no thread left blocked on timeout)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, seconds)
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 65536)


async def _read_json_fd(fd: int, seconds: float) -> dict[str, object]:
    data = b""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return json.loads(data)
        except ValueError:
            pass
        chunk = await _read_some(fd, max(0.0, deadline - time.monotonic()))
        if not chunk:
            raise SandboxError(f"bubblewrap did not report the sandbox's pid (got {data[:200]!r})")
        data += chunk
