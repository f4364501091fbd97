"""Safe default egress: an `isolated` devbox reaches public addresses and nothing else.

slirp4netns gives a devbox its outbound network by making the devbox's connections itself,
as ordinary sockets of the network namespace it runs in. Run it in the backend's namespace and
the devbox reaches whatever the host reaches: the cloud metadata endpoint (169.254.169.254),
the LAN, the host's own addresses. So a root backend runs every devbox's slirp4netns inside one
*egress namespace* of its own, whose routing table says `prohibit` for every range a devbox
must not reach (`BLOCKED_V4`, plus each address of the host); that namespace reaches the world
through a second slirp4netns (the *uplink*), started from the backend's namespace.

    devbox netns ──slirp4netns──> egress netns (prohibit routes) ──slirp4netns──> backend's netns

Why routes rather than a firewall or a proxy: routes need only iproute2 (no nftables or
iptables on a stock machine, no rules in the host's own tables to leave behind), a refused
connection fails at once (`prohibit` is EACCES, and slirp4netns answers the devbox with a
reset), and they hold for TCP, UDP and ICMP alike. Why a namespace of the backend's: the devbox's
root has power only over the devbox's own user namespace; the egress namespace belongs to the
host's, so nothing inside a devbox can change its routes, and the devbox's own routes decide
nothing (its packets end at slirp4netns, which connects from the egress namespace). IPv6 is not
offered to devboxes at all (slirp4netns without --enable-ipv6), so no v6 range is reachable.
DNS keeps working: the devbox's resolver is the uplink's forwarder (UPLINK_DNS, 10.0.3.3: the
uplink has a subnet of its own, so the devbox's slirp4netns passes it on as ordinary traffic, and
the egress namespace routes it, the one hole in 10/8), which asks the host's resolvers. The
devbox's own slirp4netns forwarder is off: it would ask the host's resolvers from the egress
namespace, where a private resolver address is refused. No mount namespace is needed (one would
pin every mount the host had when it was made, devbox disks included).

The cost: a second user-space hop on each packet (bench/egress.py measures it). A backend that is
not root cannot make a namespace its devboxes' slirp4netns can join, and runs it as before
(warned once in its log); `network_mode: host` is the documented opt-out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import subprocess

from .childwatch import end_process

log = logging.getLogger("devbox_mcp.local")

# Never reachable from an isolated devbox, whatever a policy says (besides the host's own addresses).
BLOCKED_V4: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata endpoints live here
    "172.16.0.0/12",  # private
    "192.168.0.0/16",  # private
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and broadcast
)
BLOCKED_V6: tuple[str, ...] = ("::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8", "::ffff:0:0/96")
# The uplink's subnet (not the devboxes' 10.0.2.0/24), as slirp4netns lays it out: its gateway is
# the host's loopback (refused: --disable-host-loopback, and a route here), its DNS forwarder the
# one hole in 10/8, and what devboxes use as their resolver.
UPLINK_CIDR = "10.0.3.0/24"
UPLINK_GATEWAY = "10.0.3.2"
UPLINK_DNS = "10.0.3.3"

_NETWORKS = [ipaddress.ip_network(n) for n in (*BLOCKED_V4, *BLOCKED_V6)]


def host_addresses() -> list[str]:
    """Every address of the backend's network namespace (which a devbox must not reach either)."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, check=True, timeout=10).stdout
        links = json.loads(out or b"[]")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("could not list the host's addresses for the egress rules: %s", exc)
        return []
    return sorted({a["local"] for link in links for a in link.get("addr_info", []) if a.get("local")})


def is_blocked(address: str, host: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether `address` is one a devbox may not reach (also checked by the policy proxy)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _NETWORKS) or str(ip) in host


def prohibit_routes(host: list[str]) -> list[list[str]]:
    """`ip route` commands that make the egress namespace refuse every blocked destination."""
    commands = [["ip", "route", "replace", "prohibit", net] for net in BLOCKED_V4]
    commands.append(["ip", "route", "replace", "prohibit", f"{UPLINK_GATEWAY}/32"])
    commands += [["ip", "route", "replace", "prohibit", f"{a}/32"] for a in host if ":" not in a]
    return commands


class EgressNamespace:
    """The backend's egress namespace and its uplink; `enter` is how a devbox's slirp4netns runs in it.

    Its holder process and the uplink end with the backend, however it ends (a lifeline pipe on
    the holder's stdin, `--exit-fd` on the uplink).
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self._holder: asyncio.subprocess.Process | None = None
        self._uplink: asyncio.subprocess.Process | None = None
        self._lifeline: int | None = None
        self._uplink_exit: int | None = None
        self._starting: asyncio.Task[None] | None = None

    def enter(self) -> list[str]:
        """The prefix that runs a command (a devbox's slirp4netns) inside the egress namespace."""
        assert self.pid is not None
        return ["nsenter", "-t", str(self.pid), "-n", "--"]

    async def ensure(self) -> None:
        """Start it once (concurrent callers share the start); raise OSError if it cannot start."""
        if self._holder is not None and self._holder.returncode is None:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        await self.stop()
        lifeline_r, self._lifeline = os.pipe()
        try:
            self._holder = await asyncio.create_subprocess_exec(
                "unshare", "--net", "--", "/bin/sh", "-c", "ip link set lo up && echo ready && read -r _",
                stdin=lifeline_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        finally:
            os.close(lifeline_r)
        assert self._holder.stdout is not None and self._holder.stderr is not None
        line = await asyncio.wait_for(self._holder.stdout.readline(), 20)
        if line != b"ready\n":
            err = (await self._holder.stderr.read()).decode(errors="replace").strip()
            raise OSError(f"the egress namespace did not start: {err or 'no output'}")
        # `unshare` execs the shell: its pid is the namespace's.
        self.pid = self._holder.pid
        ready_r, ready_w = os.pipe()
        exit_r, self._uplink_exit = os.pipe()
        try:
            self._uplink = await asyncio.create_subprocess_exec(
                "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", f"--cidr={UPLINK_CIDR}",
                "--ready-fd", str(ready_w), "--exit-fd", str(exit_r),
                "--netns-type=path", f"/proc/{self.pid}/ns/net", "tap0",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=[ready_w, exit_r],
            )  # fmt: skip
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.run_in_executor(None, os.read, ready_r, 1), 20)
        finally:
            os.close(ready_r)
        for command in prohibit_routes(await asyncio.to_thread(host_addresses)):
            proc = await asyncio.create_subprocess_exec(
                *self.enter(), *command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise OSError(f"could not add the egress rule {' '.join(command[3:])}: {err.decode().strip()}")
        log.info("devbox egress: public addresses only (egress namespace of pid %s)", self.pid)

    async def stop(self) -> None:
        if self._uplink_exit is not None:
            os.close(self._uplink_exit)
            self._uplink_exit = None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        for proc in (self._uplink, self._holder):
            await end_process(proc)
        self._uplink = self._holder = None
        self.pid = None
