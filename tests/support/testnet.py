"""A network of test hosts for egress tests, made of network namespaces: nothing touches the real network.

    backend netns ("host")  ──veth──  world netns
    198.51.100.1 (+ lo)               198.51.100.254, and on its lo: the test hosts of ADDRESSES

The embedded backend runs *inside* the backend namespace (`nsenter --net`: no mount namespace,
which would pin every mount of the machine, other tests' devbox disks included, while it lives),
so its devboxes' egress has nowhere to go but the world namespace. Its resolver is the machine's
(/etc/resolv.conf), so the test DNS server answers at that address: in the world namespace (or,
for a loopback resolver, in the backend namespace), never on the real network. The test reaches the backend through `Forwarder`: a listener on the test's own
loopback whose connections are made from a thread that entered the backend namespace.
Names carry the pid, so parallel runs do not collide; everything is removed even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HOST_ADDRESS = "198.51.100.1"  # the backend's own (non-loopback) address: devboxes must not reach it
WORLD_GATEWAY = "198.51.100.254"
FALLBACK_DNS = "198.51.100.53"
ADDRESSES = {
    "public": "198.51.100.7",  # stand-in public hosts (documentation ranges): the default lets them through
    "allowed": "203.0.113.10",
    "other": "203.0.113.11",
    "private": "10.1.2.3",
    "metadata": "169.254.169.254",
    "shared": "100.64.1.1",
}
NAMES = {
    "public.test": ADDRESSES["public"],
    "allowed.example": ADDRESSES["allowed"],
    "api.allowed.example": ADDRESSES["allowed"],
    "other.example": ADDRESSES["other"],
    "metadata.test": ADDRESSES["metadata"],
    "private.test": ADDRESSES["private"],
}
_CLONE_NEWNET = 0x40000000


def host_resolver() -> str:
    """The first IPv4 nameserver of /etc/resolv.conf: where the backend's lookups go."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and parts[1].count(".") == 3:
                return parts[1]
    return FALLBACK_DNS


def in_netns(name: str) -> list[str]:
    """The prefix that runs a command in a test namespace (its network only: no mount namespace)."""
    return ["nsenter", f"--net=/run/netns/{name}", "--"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def enter_netns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class Forwarder:
    """127.0.0.1:<port> here → 127.0.0.1:<target> inside the backend namespace."""

    def __init__(self, netns: str, target: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._netns, self._target = netns, target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        enter_netns(f"/run/netns/{self._netns}")  # this thread's new sockets are in the backend namespace
        asyncio.set_event_loop(self._loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def serve() -> None:
            self._server = await asyncio.start_server(handle, sock=self.listener)

        self._loop.run_until_complete(serve())
        self._loop.run_forever()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@dataclass
class Net:
    host: str  # the backend's namespace
    world: str
    directory: Path
    dns: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def exec_prefix(self) -> list[str]:
        """Runs a command inside the backend namespace."""
        return in_netns(self.host)


@contextlib.contextmanager
def make_testnet(directory: Path) -> Iterator[Net]:
    tag = f"{os.getpid() % 100000}{uuid.uuid4().hex[:3]}"
    net = Net(host=f"i13h{tag}", world=f"i13w{tag}", directory=directory, dns=host_resolver())
    veth_host, veth_world = f"e{tag}h", f"e{tag}w"
    try:
        _ip("netns", "add", net.host)
        _ip("netns", "add", net.world)
        _ip("link", "add", veth_host, "type", "veth", "peer", "name", veth_world)
        _ip("link", "set", veth_host, "netns", net.host)
        _ip("link", "set", veth_world, "netns", net.world)
        for ns, dev, address in ((net.host, veth_host, HOST_ADDRESS), (net.world, veth_world, WORLD_GATEWAY)):
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        loopback_dns = net.dns.startswith("127.")
        for address in dict.fromkeys([*ADDRESSES.values(), *([] if loopback_dns else [net.dns])]):
            _ip("-n", net.world, "addr", "add", f"{address}/32", "dev", "lo")
        _ip("-n", net.host, "route", "add", "default", "via", WORLD_GATEWAY)
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=allowed.example",
             "-addext", "subjectAltName=DNS:allowed.example,DNS:other.example",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        script = str(Path(__file__).with_name("testnet_world.py"))
        for ns, mode in ((net.world, "serve" if not loopback_dns else "no-dns"), (net.host, "dns-only")):
            if mode == "dns-only" and not loopback_dns:
                continue
            world = subprocess.Popen(
                [*in_netns(ns), sys.executable, script, mode, net.dns, str(cert), str(key), json.dumps(NAMES)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
            net.processes.append(world)
            assert world.stdout is not None and world.stdout.readline() == b"ready\n"
        # A server on the backend's own address: a devbox must not reach its host.
        serve = (
            f"import http.server as h; s = h.HTTPServer(({HOST_ADDRESS!r}, 80), h.SimpleHTTPRequestHandler); "
            "print('ready', flush=True); s.serve_forever()"
        )
        host_server = subprocess.Popen(
            [*in_netns(net.host), sys.executable, "-c", serve],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=directory,
        )  # fmt: skip
        net.processes.append(host_server)
        assert host_server.stdout is not None and host_server.stdout.readline() == b"ready\n"
        yield net
    finally:
        for proc in net.processes:
            with contextlib.suppress(Exception):
                if proc.stdin:
                    proc.stdin.close()
                proc.kill()
                proc.wait(10)
        for ns in (net.host, net.world):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@dataclass
class NetBackend:
    base_url: str
    api_key: str = field(repr=False)
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def backend_in(net: Net, data_dir: Path) -> Iterator[NetBackend]:
    """`devbox-mcp local-api` inside the backend namespace, reached through a `Forwarder`."""
    port = 18000 + os.getpid() % 1000  # the namespace is ours alone: any port is free in it
    api_key = "test-key-" + uuid.uuid4().hex
    log_path = net.directory / "backend.log"
    root = Path(__file__).resolve().parents[2]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [*net.exec_prefix(), sys.executable, "-m", "mcp_server", "local-api", "--host", "127.0.0.1",
             "--port", str(port), "--data-dir", str(data_dir)],
            env={**os.environ, "DEVBOX_LOCAL_API_KEY": api_key, "PYTHONPATH": str(root)},
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    forwarder = Forwarder(net.host, port)
    backend = NetBackend(f"http://127.0.0.1:{forwarder.port}", api_key, proc, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the backend exited at start-up:\n{backend.log}"
            assert time.monotonic() < deadline, "the backend did not start within 60 s"
            try:
                if httpx.get(backend.base_url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)  # polling a start-up, not synchronising a test
        yield backend
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
        forwarder.close()
