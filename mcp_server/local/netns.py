"""Connections into a devbox's own network namespace, for the tunnel proxy.

A socket belongs to the network namespace it was created in, whichever thread later connects
or reads it, and the network namespace is a property of each thread (setns(2) moves only the
calling thread). So each isolated devbox gets one thread that enters its namespace once and
then only creates sockets there; the event loop connects and pumps them like any other, and the
bytes go through the kernel's loopback of that namespace. The alternatives do not fit as well:
slirp4netns port forwarding (`add_hostfwd` on its API socket) copies every byte through slirp's
user-space TCP stack (measured once, by hand, on the loaded 2-core CI machine: a 100 MB download
at 296 MB/s through a hostfwd against 540 MB/s over the namespace's own loopback, and a GET's
p50 0.16 ms against 0.11 ms), and only `isolated` devboxes have slirp4netns (`none` has not); a
helper process per connection (nsenter) costs a fork and an exec per connection.

Entering another network namespace needs CAP_SYS_ADMIN over it and in our own user namespace:
a root backend has both. An unprivileged backend does not (its devboxes' namespaces belong to
user namespaces it cannot join from a threaded process), and its tunnels into isolated devboxes
answer 502 saying so; `network_mode: host` devboxes, which share the host's network, work always.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceUnavailable(Exception):
    """The backend cannot open a socket in that namespace; the message says why."""


def shares_host_network(pid: int) -> bool:
    """Whether process `pid` is in this process's network namespace."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


class NamespaceSockets:
    """Makes TCP sockets in the network namespace of process `pid` (a sandbox's pid 1).

    Holds a descriptor of the namespace, not the pid: a reused pid cannot redirect it. `close`
    ends the thread, which then no longer holds the namespace alive.
    """

    def __init__(self, pid: int) -> None:
        try:
            self._ns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NamespaceUnavailable(f"the devbox's network namespace is gone ({exc.strerror})") from None
        self._entered = threading.local()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{pid}")

    def _socket(self, family: int) -> socket.socket:
        if not getattr(self._entered, "done", False):
            if _libc.setns(self._ns, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise NamespaceUnavailable(
                    "cannot enter the devbox's network namespace"
                    + (" (the backend is not root; run it as root, or give the devbox network_mode 'host')"
                       if code == errno.EPERM else f" ({os.strerror(code)})")
                )  # fmt: skip
            self._entered.done = True
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setblocking(False)
        return sock

    async def socket(self, family: int) -> socket.socket:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._socket, family)

    def close(self) -> None:
        self._thread.shutdown(wait=False)
        os.close(self._ns)
