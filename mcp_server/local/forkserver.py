"""The fork server: a helper inside a devbox that starts its commands on request (run as a script).

Entering a devbox with `nsenter` costs a process and an exec per command (about 6 ms on a loaded
machine against 2 for a plain host spawn). This program enters the devbox once, as `nsenter -r -w`
would (its namespaces, its root, its resident process's working directory), forks once more to be
inside its pid namespace, and then starts every command with `posix_spawn` (a vfork: nothing of
this small process is copied) as a session leader with the descriptors the backend passed it.
`forkclient` starts it and talks to it; everything here is the standard library, imported before
the namespaces are entered, so nothing of the devbox's file system is ever loaded.

It inherits from whoever started it (the backend's hardened spawning thread, `spawner`) the seccomp
filter and `no_new_privs` where the profile sets it, joins the devbox's cgroups and takes its
process limit itself, and hands all of them on to every command.

It is started as `devbox-spawn-helper -I -S - FD` with this source as its stdin, and told where to go
over the socket: nothing in the devbox's `ps` or /proc names a host path, and it is not dumpable,
so the devbox's root cannot trace it or read its memory.

Protocol, over the SOCK_SEQPACKET socket FD (one message per packet, JSON):
- backend → helper, first: `forkclient.Entry` (init_pid, namespaces, own_ids, cgroup_procs,
  max_processes); it joins the cgroups and takes the limit, then enters.
- backend → helper: {"id", "argv", "env", "uid", "gid"} with 3 descriptors (SCM_RIGHTS): the
  command's stdin, stdout and stderr. `uid`/`gid` are null when the helper keeps its own ids.
- helper → backend: {"id", "started": true} with a pidfd of the command, or {"id", "error": "..."}.
- backend → helper: {"ack": id} once it has read the command's host pid from the pidfd (which
  shows it only until the command is reaped: it is not reaped before).
- helper → backend: {"id", "exit": returncode} (negative: the signal that killed it, as
  `subprocess` reports it).
- First of all, {"ready": true, "pid": its pid in the devbox} with a pidfd of itself once it is
  inside, or {"error": "..."} and an exit.
It exits when the socket ends (the backend is gone or stopped it), and dies with the sandbox's
pid namespace.
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import resource
import selectors
import signal
import socket
import sys

_CLONE_NEWUSER = 0x10000000
_FLAGS = {
    "mnt": 0x00020000, "pid": 0x20000000, "ipc": 0x08000000, "uts": 0x04000000,
    "net": 0x40000000, "cgroup": 0x02000000, "user": _CLONE_NEWUSER,
}  # fmt: skip
_PR_SET_DUMPABLE = 4
_MAX_MESSAGE = 1 << 20
_FDS_PER_REQUEST = 3
# What Python sets for itself and a command must not inherit (subprocess's restore_signals).
_RESTORED = tuple(s for s in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(signal, s))


def _send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    data = json.dumps(message, separators=(",", ":")).encode()
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def _enter(pid: int, namespaces: list[str], own_ids: bool) -> None:
    """Join `pid`'s namespaces, root and working directory (util-linux nsenter's order and rules)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fds = {name: os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name in namespaces}
    root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    cwd = os.open(f"/proc/{pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    # Two passes, as nsenter: a privileged process enters the others first and the user namespace
    # last; an unprivileged one gets the right to enter the others from the user namespace.
    for attempt in (0, 1):
        for name in ([] if attempt == 0 else ["user"]) + [n for n in namespaces if n != "user"]:
            if name not in fds:
                continue
            if libc.setns(fds[name], _FLAGS[name]) != 0:
                if attempt == 1:
                    raise OSError(ctypes.get_errno(), f"setns({name})")
                continue
            os.close(fds.pop(name))
    os.fchdir(root)
    os.chroot(".")
    os.fchdir(cwd)
    os.close(root)
    os.close(cwd)
    if own_ids:
        # The backend's root is not mapped in the devbox: become its root, as `nsenter -S 0 -G 0`.
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)


class _Server:
    def __init__(self, sock: socket.socket, own_ids: bool) -> None:
        self.sock = sock
        self.own_ids = own_ids
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, tuple[object, int]] = {}  # pidfd -> (request id, pid)
        self.unacknowledged: dict[object, int] = {}  # request id -> pidfd, not to be reaped yet

    def serve(self) -> None:
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ)
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.sock:
                    if not self._requests():
                        return
                else:
                    self._reap(key.fd)

    def _requests(self) -> bool:
        """Handle every waiting request; False once the backend has closed the socket."""
        while True:
            try:
                # Close-on-exec: a command gets the descriptors dup2'd onto its 0, 1 and 2, not these.
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    _MAX_MESSAGE, socket.CMSG_SPACE(_FDS_PER_REQUEST * 4), socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return True
            fds: list[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
            if not data and not fds:
                return False
            try:
                message = json.loads(data)
                if "ack" in message:
                    self._acknowledged(message["ack"])
                else:
                    self._start(message, fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def _start(self, request: dict, fds: list[int]) -> None:
        ident = request.get("id")
        try:
            if len(fds) != _FDS_PER_REQUEST:
                raise ValueError(f"expected {_FDS_PER_REQUEST} descriptors, got {len(fds)}")
            uid, gid = request.get("uid"), request.get("gid")
            if uid is not None and self.own_ids:
                # The real ids are the command's; RESETIDS makes them its effective ids too, and the
                # exec its saved ids (and drops the capabilities of a uid other than 0).
                os.setresgid(gid, 0, 0)
                os.setresuid(uid, 0, 0)
            try:
                pid = os.posix_spawn(
                    request["argv"][0], request["argv"], request["env"],
                    file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
                    setsid=True, resetids=uid is not None and self.own_ids,
                    setsigdef=[getattr(signal, s) for s in _RESTORED],
                )  # fmt: skip
            finally:
                if uid is not None and self.own_ids:
                    os.setresuid(0, 0, 0)
                    os.setresgid(0, 0, 0)
        except Exception as exc:  # noqa: BLE001 - told to the backend, which falls back to nsenter
            _send(self.sock, {"id": ident, "error": f"{type(exc).__name__}: {exc}"})
            return
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = (ident, pid)
        self.unacknowledged[ident] = pidfd
        _send(self.sock, {"id": ident, "started": True}, [pidfd])

    def _acknowledged(self, ident: object) -> None:
        pidfd = self.unacknowledged.pop(ident, None)
        if pidfd is not None:
            self.selector.register(pidfd, selectors.EVENT_READ)

    def _reap(self, pidfd: int) -> None:
        ident, pid = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        _send(self.sock, {"id": ident, "exit": os.waitstatus_to_exitcode(status)})


def _limit(config: dict) -> None:
    """Into the devbox's cgroups, under its process limit, as `sandbox._in_cgroups` puts commands."""
    if config.get("max_processes"):
        resource.setrlimit(resource.RLIMIT_NPROC, (config["max_processes"], config["max_processes"]))
    for procs in config.get("cgroup_procs") or ():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))


def main(argv: list[str]) -> int:
    """argv: the socket's fd. The first message on it says where to go (`forkclient.Entry`)."""
    sock = socket.socket(fileno=int(argv[0]))
    try:
        config = json.loads(sock.recv(_MAX_MESSAGE))
        _limit(config)
        libc = ctypes.CDLL(None, use_errno=True)
        own_ids = bool(config["own_ids"])
        _enter(int(config["init_pid"]), list(config["namespaces"]), own_ids=own_ids)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
        if "pid" in config["namespaces"] and (child := os.fork()) != 0:
            # The server is the child, inside the devbox's pid namespace. This process stays its
            # parent until it ends: an orphan would go to the host's init, and the namespace cannot
            # finish dying (its pid 1 waits in the kernel) until that init reaps it, which some
            # inits do seconds late (a devbox's stop took 1.5-2 s on this machine's).
            sock.close()
            os.waitpid(child, 0)
            os._exit(0)
        own = os.pidfd_open(os.getpid())
    except Exception as exc:  # noqa: BLE001 - told to the backend, which falls back to nsenter
        _send(sock, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send(sock, {"ready": True, "pid": os.getpid()}, [own])
    os.close(own)
    _Server(sock, own_ids=own_ids).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
