"""The devbox registry and lifecycle: which devboxes exist, their state, and their sandboxes.

One JSON file per devbox (`data_dir/devboxes/<id>/devbox.json`, replaced atomically) is the
registry, so it survives restarts; a devbox whose processes died with the backend comes back
`suspended` and can be resumed on the same home directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import code_mounts as code
from . import cow, image_gc, rootfs
from .captures import CaptureError, DiskCapture, ext4_used_bytes, seal
from .clock import now_ms
from .config import LocalConfig
from .disk import UNMOUNT_WAIT_SECONDS, DiskError, attached, detach
from .egress import EgressNamespace
from .errors import ApiError, disk_full, is_disk_full
from .idmap import FALLBACK_NOTE, IdRange, SubordinateMap, host_range, subordinate_map
from .ids import new_id
from .image import Image, ImageError, ImageStore, default_images_dir
from .lifecycle import IdlePolicy, IdleTimers, idle_policy
from .limits import Enforcement, Limits
from .policy_proxy import PolicyProxy, proxy_environment
from .policy_store import NetworkPolicy, PolicyStore
from .sandbox import (
    DEFAULT_USER,
    NETWORK_MODES,
    ROOT_USER,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxUser,
    sandbox_unavailable_reason,
    tools,
    warm_up,
)
from .secret_store import SecretStore
from .sizes import Size, SizeError, resolve
from .storage import Storage
from .tunnels import TunnelConfig, new_tunnel, tunnel_view

log = logging.getLogger("devbox_mcp.local")

STATUSES = (
    "queued", "scheduled", "provisioning", "initializing", "running",
    "suspending", "suspended", "resuming", "failure", "shutdown",
)  # fmt: skip
# States in which a devbox has (or is getting) a sandbox; after a restart they cannot be true.
_LIVE = ("provisioning", "initializing", "running", "suspending", "resuming")
MAX_LOG_ENTRIES = 10_000
SETUP_OUTPUT_LIMIT = 64 * 1024  # bytes of a launch command's output kept in its log entry


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Replace `path` with `data` as JSON so that a crash or a full disk leaves either the old or the new file.

    `durable=False`: not flushed to the disk first (the backend dying is still safe, the machine
    losing power may keep the old file); for a record the next durable save repeats soon.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, separators=(",", ":"))
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class Devbox:
    id: str
    status: str
    create_time_ms: int
    state_dir: Path  # backend-private; the sandbox sees only `home` and `tmp` below it
    name: str | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # {ENV_NAME: secret name}; never the values
    launch_parameters: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    file_mounts: dict[str, str] = field(default_factory=dict)
    entrypoint: str | None = None  # runs in the background once the devbox is up (again after resume)
    state_transitions: list[dict[str, Any]] = field(default_factory=list)
    failure_reason: str | None = None
    shutdown_reason: str | None = None
    end_time_ms: int | None = None
    unsafe: bool = False  # commands run as plain host processes (no bubblewrap)
    # A system of its own (rootfs.py): the ids it maps to on the host, [uid_base, gid_base, count],
    # and the image it overlays (set when it first boots). None: the host's system, read-only.
    id_range: list[int] | None = None
    image: str | None = None
    user: dict[str, Any] | None = None  # who commands run as: {name, uid, home}; None is `user`
    size: dict[str, Any] = field(default_factory=dict)  # sizes.Size.record(); empty: made before sizes
    disk: bool = False  # its writable storage is a disk image of its size (disk.py)
    disk_gap: str | None = None  # why not, when it has none
    code_mounts: list[dict[str, Any]] = field(default_factory=list)  # code_mounts.CodeMount.record(): no tokens
    blueprint_id: str | None = None  # the blueprint it starts from
    build_for: str | None = None  # the blueprint it builds (a build devbox: not listed)
    disk_path: str | None = None  # where its disk image is (on the copy-on-write pool); None: state_dir/disk.img
    # What it started from (captures.py): the capture's record, its snapshot, and the bytes in use on
    # its disk at its first start (size_bytes of its snapshots is relative to that).
    base: dict[str, Any] | None = None
    snapshot_id: str | None = None
    base_used_bytes: int | None = None
    sandbox: Sandbox | None = None
    enforcement: Enforcement | None = None  # the limits in force while it runs
    logs: list[dict[str, Any]] = field(default_factory=list)
    tunnel: dict[str, Any] | None = field(default=None, repr=False)  # tunnels.new_tunnel's record: a token
    tunnel_origin: str | None = None  # where the backend's tunnel proxy serves (tunnels.tunnel_view)

    @property
    def resource_size(self) -> Size:
        return Size.from_record(self.size)

    @property
    def disk_image(self) -> Path:
        return Path(self.disk_path) if self.disk_path else self.state_dir / "disk.img"

    @property
    def writable_root(self) -> Path:
        """Where the devbox's writable storage lives: its mounted disk, or (without one) its state directory."""
        return self.state_dir / "disk" if self.disk else self.state_dir

    @property
    def home(self) -> Path:
        return self.writable_root / "home"

    @property
    def tmp(self) -> Path:
        return self.writable_root / "tmp"

    @property
    def ids(self) -> IdRange | None:
        return IdRange(*self.id_range) if self.id_range else None

    @property
    def sandbox_user(self) -> SandboxUser:
        return SandboxUser(**self.user) if self.user else DEFAULT_USER

    @property
    def layers(self) -> rootfs.RootFs | None:
        return rootfs.RootFs.of(Path(self.image) / "rootfs", self.writable_root) if self.image else None

    @property
    def network_mode(self) -> str:
        return str(self.launch_parameters.get("network_mode", "isolated"))

    @property
    def network_policy_id(self) -> str | None:
        return self.launch_parameters.get("network_policy_id")

    def view(self) -> dict[str, Any]:
        """The DevboxView of the Runloop API."""
        view: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "create_time_ms": self.create_time_ms,
            "capabilities": [],
            "launch_parameters": dict(self.launch_parameters),
            "metadata": dict(self.metadata),
            "state_transitions": list(self.state_transitions),
            "initiator_type": "api",
            "blueprint_id": self.blueprint_id,
            "snapshot_id": self.snapshot_id,
            "resources": self.resources(),  # ours: the size and the limits really in force
        }
        if self.tunnel is not None:
            view["tunnel"] = tunnel_view(self.tunnel, self.tunnel_origin)
        for key in ("failure_reason", "shutdown_reason", "end_time_ms"):
            value = getattr(self, key)
            if value is not None:
                view[key] = value
        return view

    def resources(self) -> dict[str, Any]:
        """The size, and (while it runs) the limits this host could not enforce; see limits.py."""
        size = self.resource_size
        view: dict[str, Any] = {
            "size": size.name,
            "cpu_cores": size.cpu_cores,
            "memory_gib": size.memory_gib,
            "disk_gib": size.disk_gib,
            "max_processes": size.pids,
        }
        if self.enforcement is not None and self.enforcement.not_enforced:
            view["not_enforced"] = dict(self.enforcement.not_enforced)
        if self.enforcement is not None and self.enforcement.notes:
            view["notes"] = list(self.enforcement.notes)
        return view

    def usage(self) -> dict[str, Any]:
        """DevboxResourceUsageView: active time from the state transitions (running only, never
        suspended), times the size: vCPUs and memory over active time, disk over elapsed time."""
        end = self.end_time_ms or now_ms()
        active_ms = 0
        running_since: int | None = None
        for transition in self.state_transitions:
            at = int(transition["transition_time_ms"])
            if transition["status"] == "running" and running_since is None:
                running_since = at
            elif transition["status"] != "running" and running_since is not None:
                active_ms += at - running_since
                running_since = None
        if running_since is not None:
            active_ms += end - running_since
        elapsed_ms = end - self.create_time_ms
        size = self.resource_size
        view: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "start_time_ms": self.create_time_ms,
            "total_active_seconds": active_ms // 1000,
            "total_elapsed_seconds": elapsed_ms // 1000,
            "vcpu_seconds": int(active_ms * size.cpu_cores) // 1000,
            "memory_gb_seconds": active_ms * size.memory_gib // 1000,
            "disk_gb_seconds": elapsed_ms * size.disk_gib // 1000,
        }
        if self.end_time_ms is not None:
            view["end_time_ms"] = self.end_time_ms
        return view

    def record(self) -> dict[str, Any]:
        """What devbox.json holds: every field but the live sandbox and the logs (kept in logs.jsonl)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _RUNTIME}
        data["state_dir"] = str(self.state_dir)
        return data


_RUNTIME = ("sandbox", "enforcement", "logs", "tunnel_origin")  # Devbox fields not kept in devbox.json


class DevboxManager:
    """Owns every devbox of one backend: registry on disk, lifecycle, sandboxes, logs."""

    def __init__(
        self, config: LocalConfig, secrets: SecretStore | None = None, policies: PolicyStore | None = None
    ) -> None:
        self.config = config
        self.secrets = secrets or SecretStore(config.data_dir)
        self.policies = policies or PolicyStore(config.data_dir)
        # Devboxes under a hostname allowlist reach out only through this (policy_proxy.py).
        self.proxy = PolicyProxy(self._policy_of)
        self.storage = Storage(config.data_dir / "devboxes")
        self.root = self.storage.root
        self._devboxes: dict[str, Devbox] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._watchers: set[asyncio.Future[None]] = set()
        self._keep_alive_until: dict[str, float] = {}  # monotonic deadlines (keep_alive_time_seconds)
        self._keep_alive_timers: dict[str, asyncio.Task[None]] = {}
        self._unsaved: set[str] = set()  # devboxes whose latest state a full disk kept out of devbox.json
        # Log tails (`logs_since`): entries trimmed off each devbox's list so far, and who to wake.
        self._logs_dropped: dict[str, int] = {}
        self._log_waiters: dict[str, set[asyncio.Event]] = {}
        # Root backends: the id range devboxes map to and the images they overlay (idmap.py, image.py).
        self.ids: IdRange | None = None
        self.user_map: SubordinateMap | None = None  # a backend that is not root: its /etc/subuid range
        self.images: ImageStore | None = None
        self._image_build: asyncio.Future[Image] | None = None
        self._image_holds: dict[Path, int] = {}  # images this backend puts devboxes on (image_gc.hold)
        self._image_holds_lock = threading.Lock()
        # Root backends keep devbox disks on a copy-on-write pool, so that captures are reflinks (cow.py).
        self.cow_reason = cow.unavailable_reason()
        self.pool = cow.Pool(config.data_dir / "cow") if self.cow_reason is None else None
        self.limits = Limits(config.data_dir, spares=self.pool.root / "spares" if self.pool else self._spares_dir)
        self._capturing: dict[str, int] = {}  # devbox id -> captures in progress
        # Called with the devbox id before its sandbox stops (suspend, shutdown, backend exit).
        self.on_stop: list[Callable[[str], Awaitable[None]]] = []
        # Each says whether something (a command) is running in the devbox: it is not idle then.
        self.busy_checks: list[Callable[[str], bool]] = []
        # Root backends: the namespace every isolated devbox's slirp4netns runs in (egress.py).
        self.egress = EgressNamespace() if os.geteuid() == 0 else None
        self._warned_egress = False
        self.tunnel_origin: str | None = None  # set when the tunnel proxy listens (tunnel_proxy.py)
        self._tunnel_keys: dict[str, str] = {}  # tunnel_key -> devbox id
        self.idle = IdleTimers(lambda devbox_id: any(check(devbox_id) for check in self.busy_checks), self._on_idle)

    @property
    def _spares_dir(self) -> Path:
        return self.root / ".spare-disks"

    # -- registry --------------------------------------------------------------------------

    async def startup(self) -> None:
        self.storage.open()
        if self.pool is not None:
            try:
                await asyncio.to_thread(self.pool.open)
                (self.pool.root / "disks").mkdir(mode=0o700, exist_ok=True)
            except (cow.CowError, OSError) as exc:
                log.warning("devbox disks: no copy-on-write pool (%s); snapshots are full copies", exc)
                self.cow_reason, self.pool = f"the copy-on-write pool could not be mounted: {exc}", None
                self.limits.pool.directory = self._spares_dir
        await asyncio.to_thread(warm_up)
        await asyncio.to_thread(self._find_system)
        for path in sorted(self.root.glob("*/devbox.json")):
            try:
                devbox = self._load(path)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("skipping unreadable devbox record %s: %s", path, exc)
                continue
            self._register(devbox)
            if not devbox.disk:  # a devbox's disk is cleaned once mounted, when it resumes
                await asyncio.to_thread(self._remove_partial_writes, devbox)
            if devbox.status in ("running", "suspending", "resuming"):
                # Its processes died with the previous backend; its home is intact.
                self._transition(devbox, "suspended")
            elif devbox.status in ("provisioning", "initializing"):
                devbox.failure_reason = "execution_failed"
                self._transition(devbox, "failure")
                self.add_log(
                    devbox.id,
                    {
                        "level": "error",
                        "source": "setup_commands",
                        "message": "the backend stopped while this devbox was being set up",
                    },
                )
        await self.limits.startup({d.id: d.state_dir / "disk" for d in self._devboxes.values() if d.disk})

    async def shutdown(self) -> None:
        """Backend exit: running devboxes become `suspended` (their processes cannot outlive us)."""
        for watcher in [*self._watchers, *self._keep_alive_timers.values()]:
            watcher.cancel()
        self._keep_alive_timers.clear()
        self.idle.close()
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await task

        async def suspend(devbox: Devbox) -> None:
            await self._stop_sandbox(devbox)
            if devbox.status in _LIVE:
                self._transition(devbox, "suspended")

        # All at once: the kernel can take a while to tear down a sandbox's namespaces, and a
        # shutdown should cost the slowest sandbox, not their sum.
        live = [devbox for devbox in self._devboxes.values() if devbox.sandbox is not None]
        await asyncio.gather(*(suspend(devbox) for devbox in live))
        await self.proxy.close()
        if self.egress is not None:
            await self.egress.stop()
        await self.limits.shutdown()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
        with self._image_holds_lock:
            for fd in self._image_holds.values():
                os.close(fd)
            self._image_holds.clear()
        self.storage.close()

    def _find_system(self) -> None:
        """Decide what devboxes run on: a system of their own (root backend) or the host's (logged)."""
        if sandbox_unavailable_reason() is not None:
            return
        directory = default_images_dir()
        self.ids = host_range(directory)
        if self.ids is None:
            self.user_map, why_not = subordinate_map()
            if self.user_map is not None:
                log.info("devboxes: %s", self.user_map.note)
            else:
                log.warning("devboxes: %s (%s)", FALLBACK_NOTE, why_not)
            return
        self.images = ImageStore(directory, self.ids)
        image = self.images.current()
        if image is not None:
            log.info("devboxes run on the image %s, ids mapped to host ids %d-%d", image.path,
                     self.ids.uid_base, self.ids.uid_base + self.ids.count - 1)  # fmt: skip
        else:
            reason = self.images.unavailable_reason()
            log.warning(
                "the devbox image %s is not built yet: %s", self.images.name,
                f"devboxes cannot start ({reason})" if reason
                else "the first devbox builds it (a few minutes), or run `devbox-mcp image --build`",
            )  # fmt: skip

    def _build_image(self) -> Image:
        """Build the current recipe's image, then let go of the older ones and remove those nothing uses."""
        assert self.images is not None
        image = self.images.build(lambda line: log.info("devbox image: %s", line))
        self._hold_image(image)
        image_gc.collect(self.images)
        return image

    def _hold_image(self, image: Image) -> None:
        """Record this data directory as a user of `image` (only: the devboxes on older ones are in their records)."""
        assert self.images is not None
        with self._image_holds_lock:
            if image.path not in self._image_holds:
                self._image_holds[image.path] = image_gc.hold(self.images, image, self.config.data_dir)
            for path in [p for p in self._image_holds if p != image.path]:
                os.close(self._image_holds.pop(path))

    async def _image(self, devbox: Devbox) -> Image:
        """The image for a new devbox: the current one, built first (once, shared) when missing."""
        assert self.images is not None
        image = self.images.current()
        if image is not None and image.path not in self._image_holds:
            try:
                await asyncio.to_thread(self._hold_image, image)
            except FileNotFoundError:  # removed meanwhile, as old, by a backend of another recipe: build it
                image = None
        if image is not None:
            return image
        self.add_log(
            devbox.id,
            {"source": "setup_commands", "message": "building the devbox image (once per machine, a few minutes)"},
        )
        if self._image_build is None or self._image_build.done():
            self._image_build = asyncio.ensure_future(asyncio.to_thread(self._build_image))
        image = await asyncio.shield(self._image_build)
        self.add_log(devbox.id, {"source": "setup_commands", "message": f"devbox image {image.path.name} ready"})
        return image

    @staticmethod
    def _remove_partial_writes(devbox: Devbox) -> None:
        from .files import remove_partial_writes  # files imports this module

        try:
            removed = remove_partial_writes(devbox)
        except OSError as exc:
            log.warning("could not remove the partial writes of devbox %s: %s", devbox.id, exc)
            return
        if removed:
            log.info("devbox %s: removed %d temporary files of writes cut short by a restart", devbox.id, removed)

    def _load(self, path: Path) -> Devbox:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["state_dir"] = path.parent
        known = {f.name for f in fields(Devbox)} - set(_RUNTIME)
        devbox = Devbox(**{k: v for k, v in data.items() if k in known})
        logs_path = path.parent / "logs.jsonl"
        if logs_path.exists():
            lines = logs_path.read_text(encoding="utf-8", errors="replace").splitlines()[-MAX_LOG_ENTRIES:]
            for line in lines:
                with contextlib.suppress(ValueError):
                    devbox.logs.append(json.loads(line))
        return devbox

    def _save(self, devbox: Devbox, *, durable: bool = True) -> None:
        write_json_atomic(devbox.state_dir / "devbox.json", devbox.record(), durable=durable)
        self._unsaved.discard(devbox.id)

    def _register(self, devbox: Devbox) -> None:
        self._devboxes[devbox.id] = devbox
        devbox.tunnel_origin = self.tunnel_origin
        if devbox.tunnel is not None:
            self._tunnel_keys[devbox.tunnel["tunnel_key"]] = devbox.id

    def all(self) -> list[Devbox]:
        return sorted(self._devboxes.values(), key=lambda d: (d.create_time_ms, d.id))

    def has_live_devbox(self) -> bool:
        """Whether any devbox has (or is getting) a sandbox: a shared backend is not idle then."""
        return any(d.status in _LIVE or d.sandbox is not None for d in self._devboxes.values())

    def get(self, devbox_id: str) -> Devbox:
        devbox = self._devboxes.get(devbox_id)
        if devbox is None:
            raise ApiError(404, f"devbox {devbox_id!r} not found; list devboxes to see which ids exist")
        return devbox

    def live_view(self, devbox_id: str) -> dict[str, Any]:
        """The view, with what a running devbox uses now (memory, disk, CPU seconds) in its resources."""
        devbox = self.get(devbox_id)
        view = devbox.view()
        if devbox.status == "running":
            view["resources"].update(self.limits.live(devbox_id))
        return view

    def require_running(self, devbox_id: str) -> Devbox:
        """The devbox, to be used now (a command, a file): that use keeps it from idling out."""
        devbox = self.get(devbox_id)
        if devbox.status == "running" and devbox.sandbox is not None and devbox.sandbox.alive:
            self.idle.touch(devbox_id)
            return devbox
        raise ApiError(400, not_running_message(devbox))

    def command_env(self, devbox: Devbox) -> dict[str, str]:
        """The environment a command of the devbox gets: its variables, and its secrets' current values
        (after the proxy's variables, for a devbox that reaches out only through the policy's proxy)."""
        proxy = proxy_environment() if devbox.sandbox is not None and devbox.sandbox.spec.proxy_only else {}
        return {**proxy, **devbox.environment_variables, **self.secrets.environment(devbox.secrets)}

    def _policy_of(self, devbox_id: str) -> NetworkPolicy | None:
        devbox = self._devboxes.get(devbox_id)
        policy_id = devbox.network_policy_id if devbox else None
        return self.policies.find(policy_id) if policy_id else None

    def _check_policy(self, params: dict[str, Any], network: str, unsafe: bool) -> None:
        """A policy must exist, and (unless it allows all) needs an isolated devbox on a root backend."""
        policy_id = params.get("network_policy_id")
        if policy_id is None:
            return
        policy = self.policies.find(policy_id)
        if policy is None:
            raise ApiError(
                400,
                f"launch_parameters.network_policy_id: no network policy has the id {policy_id!r}; create one "
                "(POST /v1/network-policies) or list them (GET /v1/network-policies)",
            )
        if network != "isolated":
            raise ApiError(
                400,
                f"launch_parameters.network_policy_id applies to network_mode 'isolated', not {network!r}; "
                "leave network_mode out",
            )
        if not policy.allow_all and (unsafe or os.geteuid() != 0):
            raise ApiError(
                400,
                "launch_parameters.network_policy_id: a hostname allowlist needs a sandboxed devbox on a backend "
                "running as root (its proxy is opened inside the devbox's network namespace)",
            )

    # -- logs ------------------------------------------------------------------------------

    def add_log(self, devbox_id: str, entry: dict[str, Any]) -> None:
        """Append a log entry (level, source, timestamp_ms, cmd?, cmd_id?, exit_code?, message?)."""
        devbox = self._devboxes.get(devbox_id)
        if devbox is None:
            return
        entry = {"level": "info", "timestamp_ms": now_ms(), **entry}
        devbox.logs.append(entry)
        if len(devbox.logs) > MAX_LOG_ENTRIES:
            trimmed = len(devbox.logs) - MAX_LOG_ENTRIES
            self._logs_dropped[devbox_id] = self._logs_dropped.get(devbox_id, 0) + trimmed
            del devbox.logs[:trimmed]
        self._wake_log_waiters(devbox_id)
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
        try:
            with open(devbox.state_dir / "logs.jsonl", "ab") as fh:
                end = fh.seek(0, os.SEEK_END)
                try:
                    fh.write(line)
                    fh.flush()
                except OSError:
                    fh.truncate(end)  # no half line for the next entry to run into
                    raise
        except OSError as exc:
            log.warning("could not persist a log entry of %s: %s", devbox_id, exc)

    def logs(self, devbox_id: str, execution_id: str | None = None) -> list[dict[str, Any]]:
        devbox = self.get(devbox_id)
        if execution_id:
            return [e for e in devbox.logs if e.get("cmd_id") == execution_id]
        return list(devbox.logs)

    def logs_since(self, devbox_id: str, position: int) -> tuple[list[dict[str, Any]], int]:
        """The entries added after `position` (0: all still kept) and the position after them, for
        a tail that reads on as entries come (`log_waiter` wakes it)."""
        devbox = self.get(devbox_id)
        dropped = self._logs_dropped.get(devbox_id, 0)
        return devbox.logs[max(0, position - dropped) :], dropped + len(devbox.logs)

    @contextlib.contextmanager
    def log_waiter(self, devbox_id: str) -> Iterator[asyncio.Event]:
        """An event set at the devbox's next log entry or status change."""
        event = asyncio.Event()
        waiters = self._log_waiters.setdefault(devbox_id, set())
        waiters.add(event)
        try:
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                self._log_waiters.pop(devbox_id, None)

    def _wake_log_waiters(self, devbox_id: str) -> None:
        for event in self._log_waiters.get(devbox_id, ()):
            event.set()

    # -- state changes ---------------------------------------------------------------------

    def _transition(
        self, devbox: Devbox, status: str, *, refuse_unsaved: str | None = None, save: bool = True, **extra: Any
    ) -> None:
        """Move to `status` and record it in devbox.json (`save=False`: the next change, which follows
        at once, records both; each save waits for the disk).

        When the record cannot be written (a full disk), a change that has not happened yet
        (`refuse_unsaved` names it) is undone and refused with 507; one that already happened
        (a sandbox that stopped) stands in memory and reaches the disk with the next save.
        """
        before = (devbox.status, devbox.end_time_ms)
        devbox.status = status
        transition: dict[str, Any] = {"status": status, "transition_time_ms": now_ms()}
        if status == "failure" and devbox.failure_reason:
            transition["failure_reason"] = devbox.failure_reason
        transition.update(extra)
        devbox.state_transitions.append(transition)
        if status in ("shutdown", "failure"):
            devbox.end_time_ms = transition["transition_time_ms"]
        try:
            if save:
                self._save(devbox)
        except OSError as exc:
            if refuse_unsaved is not None:
                devbox.status, devbox.end_time_ms = before
                devbox.state_transitions.pop()
                if is_disk_full(exc):
                    raise disk_full(refuse_unsaved) from None
                raise
            self._unsaved.add(devbox.id)
            log.warning("could not record that devbox %s is %s: %s", devbox.id, status, exc)
        if status == "running":
            self._arm_keep_alive(devbox)
            self.idle.arm(devbox.id, idle_policy(devbox.launch_parameters))
        else:
            self._disarm_keep_alive(devbox.id)
            self.idle.disarm(devbox.id)
        event = self._changed.pop(devbox.id, None)
        if event is not None:
            event.set()
        self._wake_log_waiters(devbox.id)

    async def wait_for_status(self, devbox_id: str, statuses: Iterable[str], seconds: float) -> Devbox:
        """Wait until the devbox is in one of `statuses`; ApiError 408 when `seconds` run out first."""
        wanted = set(statuses)
        devbox = self.get(devbox_id)
        deadline = time.monotonic() + seconds
        while devbox.status not in wanted:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError(
                    408,
                    f"devbox {devbox_id} is still {devbox.status!r} after {seconds:g}s; call wait_for_status again",
                )
            event = self._changed.setdefault(devbox_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
        return devbox

    def _lock(self, devbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(devbox_id, asyncio.Lock())

    # -- lifecycle -------------------------------------------------------------------------

    def create(
        self,
        *,
        name: str | None,
        environment_variables: dict[str, str],
        launch_parameters: dict[str, Any],
        metadata: dict[str, str],
        file_mounts: dict[str, str] | None = None,
        entrypoint: str | None = None,
        secrets: dict[str, str] | None = None,
        user: SandboxUser = DEFAULT_USER,
        tunnel: TunnelConfig | None = None,
        code_mounts: list[code.CodeMount] | None = None,
        blueprint_id: str | None = None,
        build_for: str | None = None,
        base: DiskCapture | None = None,
        snapshot_id: str | None = None,
    ) -> Devbox:
        """Register a devbox and start booting it in the background (status `provisioning`).

        `base`: its disk is a copy-on-write clone of that capture (captures.py), `snapshot_id` names it.
        """
        unavailable = sandbox_unavailable_reason()
        unsafe = False
        if unavailable:
            if not self.config.unsafe_no_sandbox:
                raise ApiError(400, f"cannot create a devbox on this machine: {unavailable}")
            unsafe = True
        if self.images is not None and not unsafe and self.images.current() is None:
            reason = self.images.unavailable_reason()
            if reason:
                raise ApiError(400, f"cannot create a devbox on this machine: {reason}")
        if user != DEFAULT_USER and (unsafe or self.ids is None):
            raise ApiError(
                400,
                "launch_parameters.user_parameters: this backend can run commands only as `user` (uid 1000): "
                + ("its devboxes are plain host processes" if unsafe else FALLBACK_NOTE),
            )
        params = dict(launch_parameters)
        network = params.get("network_mode") or "isolated"
        if network not in NETWORK_MODES:
            raise ApiError(
                400,
                f"launch_parameters.network_mode must be one of {', '.join(NETWORK_MODES)}; got {network!r}",
            )
        params["network_mode"] = network
        self._check_policy(params, network, unsafe)
        params["sandbox"] = "none (unsafe: commands run as host processes)" if unsafe else "bubblewrap"
        try:
            size = resolve(params)
        except SizeError as exc:
            raise ApiError(400, str(exc)) from None
        if base is not None:
            user = self._check_base(base, size, user, unsafe=unsafe, file_mounts=file_mounts)
        devbox_id = new_id("dbx")
        devbox = Devbox(
            id=devbox_id,
            status="provisioning",
            create_time_ms=now_ms(),
            state_dir=self.root / devbox_id,
            name=name,
            environment_variables=dict(environment_variables),
            secrets=dict(secrets or {}),
            launch_parameters=params,
            metadata=dict(metadata),
            file_mounts=dict(file_mounts or {}),
            entrypoint=entrypoint or None,
            unsafe=unsafe,
            id_range=None if unsafe or self.ids is None else [self.ids.uid_base, self.ids.gid_base, self.ids.count],
            user=None if user == DEFAULT_USER else {"name": user.name, "uid": user.uid, "home": user.home},
            size=size.record(),
            tunnel=new_tunnel(tunnel) if tunnel is not None else None,
            code_mounts=[mount.record() for mount in code_mounts or ()],
            blueprint_id=blueprint_id,
            build_for=build_for,
        )
        devbox.disk_gap = self.limits.disk_gap(size, sandboxed=not unsafe)
        devbox.disk = devbox.disk_gap is None
        if base is not None:
            if not devbox.disk:
                raise ApiError(400, f"cannot start a devbox from a snapshot here: it would get no disk ({devbox.disk_gap})")
            devbox.base, devbox.snapshot_id = base.record(), snapshot_id
            devbox.image, devbox.base_used_bytes = base.system_image, base.used_bytes
        if devbox.disk and self.pool is not None:
            devbox.disk_path = str(self.pool.root / "disks" / f"{devbox_id}.img")
        devbox.state_transitions.append(
            {"status": "provisioning", "transition_time_ms": devbox.create_time_ms}
        )
        try:
            devbox.state_dir.mkdir(mode=0o700)
            self._save(devbox)
        except OSError as exc:
            shutil.rmtree(devbox.state_dir, ignore_errors=True)  # no half-made devbox to find at the next start
            if is_disk_full(exc):
                raise disk_full("create a devbox") from None
            raise
        self._register(devbox)
        self._spawn_task(devbox_id, self._boot(devbox, list(code_mounts or ())))
        return devbox

    def _spawn_task(self, devbox_id: str, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks[devbox_id] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(devbox_id, None) if self._tasks.get(devbox_id) is t else None
        )

    def _check_base(
        self, base: DiskCapture, size: Size, user: SandboxUser, *, unsafe: bool, file_mounts: dict[str, str] | None
    ) -> SandboxUser:
        """Whether a devbox of `size` for `user` can start from `base`; the user it runs as."""
        if unsafe or self.ids is None or base.id_range != [self.ids.uid_base, self.ids.gid_base, self.ids.count]:
            raise ApiError(400, "cannot start a devbox from this snapshot: it was made by a backend with another id range")
        if base.system_image is not None and ImageStore.at(Path(base.system_image)) is None:
            raise ApiError(400, f"the devbox image this snapshot was made on ({base.system_image}) is gone")
        if size.disk_bytes < base.disk_bytes:
            raise ApiError(
                400,
                f"launch_parameters.resource_size_request: the snapshot's disk is {base.disk_bytes // (1 << 30)} GiB; "
                "ask for a size with at least that much disk",
            )
        if file_mounts:
            raise ApiError(400, "file_mounts: not with a snapshot (its home is the snapshot's); write the files after create")
        base_user = SandboxUser(**base.user) if base.user else DEFAULT_USER
        if user != DEFAULT_USER and user != base_user:
            raise ApiError(
                400,
                f"launch_parameters.user_parameters: the snapshot's home belongs to {base_user.name!r} "
                f"(uid {base_user.uid}); leave user_parameters out or give that user",
            )
        return base_user

    def _clone_base(self, devbox: Devbox) -> None:
        """The disk of a devbox started from a capture: a clone of it, grown to the devbox's size."""
        assert devbox.base is not None
        base = DiskCapture.from_record(devbox.base)
        devbox.disk_image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        cow.clone(base.image, devbox.disk_image)
        os.chmod(devbox.disk_image, 0o600)
        if devbox.resource_size.disk_bytes > base.disk_bytes:
            os.truncate(devbox.disk_image, devbox.resource_size.disk_bytes)
            result = subprocess.run(["resize2fs", "-f", str(devbox.disk_image)], capture_output=True, timeout=120)
            if result.returncode != 0:
                raise DiskError(f"could not grow the disk to its size: {result.stderr.decode(errors='replace').strip()}")

    async def _boot(self, devbox: Devbox, mounts: list[code.CodeMount]) -> None:
        """Provision (image, limits, directories, code mounts, sandbox), then initialize (install and
        launch commands), then run; `failure` with the reason logged when a step fails."""
        try:
            if devbox.base is not None:
                await asyncio.to_thread(self._clone_base, devbox)
            elif devbox.id_range is not None:
                devbox.image = str((await self._image(devbox)).path)
                # Recorded before anything is made on it; flushed by the next transition's save.
                self._save(devbox, durable=False)
            await self._start_limits(devbox)
            if devbox.base is not None:  # its home and system are the capture's: as at a resume
                await asyncio.to_thread(self._prepare_dirs_for_resume, devbox)
                from .files import partial_writes_dir  # files imports this module

                partial_writes_dir(devbox)
            else:
                await asyncio.to_thread(self._prepare_dirs, devbox)
            if not await self._clone_code_mounts(devbox, mounts):
                devbox.failure_reason = "execution_failed"
                await self._stop_sandbox(devbox)
                self._transition(devbox, "failure")
                return
            del mounts  # the tokens go with it
            await self._start_sandbox(devbox)
            await self._create_account(devbox)
            # With no command to run, `running` follows at once: one save for both.
            self._transition(devbox, "initializing", save=bool(self._launch_commands(devbox)))
            if not await self._run_launch_commands(devbox):
                devbox.failure_reason = "execution_failed"
                await self._stop_sandbox(devbox)
                self._transition(devbox, "failure")
                return
            await self._start_entrypoint(devbox)
            self._transition(devbox, "running")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever went wrong, the devbox must end in `failure`, not hang
            if not isinstance(exc, SandboxError | OSError | ImageError | DiskError):
                log.exception("devbox %s failed to start", devbox.id)
            reason = "the disk is full; free space and create the devbox again" if is_disk_full(exc) else exc
            self.add_log(
                devbox.id,
                {
                    "level": "error",
                    "source": "setup_commands",
                    "message": f"the sandbox failed to start: {reason}",
                },
            )
            await self._stop_sandbox(devbox)
            devbox.failure_reason = "execution_failed"
            self._transition(devbox, "failure")

    async def _clone_code_mounts(self, devbox: Devbox, mounts: list[code.CodeMount]) -> bool:
        """Clone each code mount into the home (host side, see code_mounts.py); False at the first that fails."""
        for mount in mounts:
            dest = devbox.home / mount.repo_name
            try:
                summary = await code.clone(mount, dest)
                ids = devbox.ids
                if ids is not None:
                    uid = devbox.sandbox_user.uid
                    await asyncio.to_thread(rootfs.give_tree, dest, ids.host_uid(uid), ids.host_gid(uid))
            except (code.CodeMountError, OSError) as exc:
                self.add_log(devbox.id, {"level": "error", "source": "setup_commands",
                                         "message": f"code mount {mount.label}: {exc}"})  # fmt: skip
                return False
            self.add_log(devbox.id, {"source": "setup_commands", "message": summary})
        return True

    def _prepare_dirs(self, devbox: Devbox) -> None:
        if devbox.base_used_bytes is None and devbox.disk:
            # The empty disk's superblock, as mkfs wrote it: what a capture's is measured against.
            devbox.base_used_bytes = ext4_used_bytes(devbox.disk_image)
        for path in (devbox.home, devbox.tmp):
            path.mkdir(exist_ok=True)
        os.chmod(devbox.home, 0o755)
        os.chmod(devbox.tmp, 0o1777)
        from .files import partial_writes_dir, write_mounted_file  # files imports this module

        partial_writes_dir(devbox)
        ids, layers, user = devbox.ids, devbox.layers, devbox.sandbox_user
        if ids is not None and layers is not None:
            # Nothing has run in this home yet: the backend's files in it cannot be links planted by the devbox.
            rootfs.prepare_first_boot(layers, ids, devbox.home, devbox.tmp, user.uid)
        for path, contents in devbox.file_mounts.items():
            write_mounted_file(devbox, path, contents)
        if ids is not None:
            rootfs.give_tree(devbox.home, ids.host_uid(user.uid), ids.host_gid(user.uid))

    async def _create_account(self, devbox: Devbox) -> None:
        """An account other than root and `user` is created at the first boot, with passwordless sudo."""
        user = devbox.sandbox_user
        if devbox.sandbox is None or devbox.ids is None or user.uid in (0, DEFAULT_USER.uid):
            return
        script = (
            'id -u "$1" >/dev/null 2>&1 || { getent group "$1" >/dev/null || groupadd --gid "$2" "$1"; '
            'useradd --no-create-home --home-dir "$3" --uid "$2" --gid "$1" --shell /bin/bash "$1"; } '
            '&& printf "%s ALL=(ALL:ALL) NOPASSWD: ALL\\n" "$1" > "/etc/sudoers.d/devbox-user-$1" '
            '&& chmod 0440 "/etc/sudoers.d/devbox-user-$1"'
        )
        proc = await devbox.sandbox.spawn(
            script, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            args=(user.name, str(user.uid), user.home), user=ROOT_USER,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SandboxError(f"could not create the account {user.name!r} (uid {user.uid}): {out.decode(errors='replace').strip()}")

    async def _start_limits(self, devbox: Devbox) -> None:
        """Mount the devbox's disk and make its cgroups (limits.py), before its directories and sandbox."""
        # In a directory of its own: a devbox with its own system has it bound from there (rootfs.fstab).
        (devbox.state_dir / "proc").mkdir(exist_ok=True)
        devbox.enforcement = await self.limits.start(
            devbox.id,
            devbox.resource_size,
            image=devbox.disk_image if devbox.disk else None,
            mountpoint=devbox.state_dir / "disk",
            meminfo=devbox.state_dir / "proc" / "meminfo",
            sandboxed=not devbox.unsafe,
            disk_gap=devbox.disk_gap,
        )

    def _proxy_only(self, devbox: Devbox) -> bool:
        """Whether the devbox reaches out only through the policy's proxy (decided at each start)."""
        policy = self._policy_of(devbox.id)
        return devbox.network_policy_id is not None and (policy is None or not policy.allow_all)

    async def _egress_prefix(self, devbox: Devbox) -> tuple[str, ...]:
        """Start the egress namespace if an isolated devbox needs it: it fails closed, never open."""
        if devbox.unsafe or devbox.network_mode != "isolated" or self._proxy_only(devbox) or not tools()["slirp4netns"]:
            return ()  # (without slirp4netns an isolated devbox has no way out at all)
        if self.egress is None:
            if not self._warned_egress:
                self._warned_egress = True
                log.warning(
                    "this backend is not root: isolated devboxes reach every address the host reaches "
                    "(private and link-local ones too); run it as root for public-only egress"
                )
            return ()
        try:
            await self.egress.ensure()
        except (OSError, TimeoutError) as exc:
            raise SandboxError(f"could not set up the devbox's egress rules: {exc}") from None
        return tuple(self.egress.enter())

    def _sandbox_for(self, devbox: Devbox, egress_prefix: tuple[str, ...] = ()) -> Sandbox:
        limits = devbox.enforcement
        spec = SandboxSpec(
            home=devbox.home,
            tmp=devbox.tmp,
            hostname=devbox.id.replace("_", "-"),
            network=devbox.network_mode,  # type: ignore[arg-type]
            unsafe=devbox.unsafe,
            rootfs=devbox.layers,
            ids=devbox.ids,
            user_map=self.user_map if devbox.ids is None and not devbox.unsafe else None,
            user=devbox.sandbox_user,
            cgroup_procs=limits.cgroup_procs if limits else (),
            proc_files=tuple(limits.proc_files.items()) if limits else (),
            ram_disk_bytes=limits.ram_disk_bytes if limits else None,
            run_tmpfs_bytes=limits.run_tmpfs_bytes if limits else None,
            # Counted per user namespace, so per devbox; a host process (unsafe) would count the host's.
            max_processes=devbox.resource_size.pids if limits and not devbox.unsafe else None,
            egress_prefix=egress_prefix,
            proxy_only=not devbox.unsafe and self._proxy_only(devbox),
        )
        return Sandbox(spec)

    async def _start_sandbox(self, devbox: Devbox) -> None:
        sandbox = self._sandbox_for(devbox, await self._egress_prefix(devbox))
        devbox.sandbox = sandbox
        await sandbox.start()
        if sandbox.spec.proxy_only:
            assert sandbox.init_pid is not None
            await self.proxy.attach(devbox.id, sandbox.init_pid)
        for warning in sandbox.warnings:
            self.add_log(devbox.id, {"level": "warn", "source": "stats", "message": warning})
        watcher = asyncio.ensure_future(self._watch_sandbox(devbox, sandbox))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch_sandbox(self, devbox: Devbox, sandbox: Sandbox) -> None:
        """A sandbox that dies on its own (killed, out of memory) leaves its devbox suspended, resumable."""
        await sandbox.exited()
        if devbox.sandbox is not sandbox:
            return  # stopped on purpose
        async with self._lock(devbox.id):
            if devbox.sandbox is not sandbox:
                return
            if self.limits.oom_kills(devbox.id):
                # Out of memory with nothing left to kill but the devbox itself (RAM-backed files
                # fill its memory, say): resuming would start it into the same state.
                self.add_log(
                    devbox.id,
                    {
                        "level": "error",
                        "source": "stats",
                        "message": f"the devbox ran out of memory ({devbox.resource_size.memory_gib} GiB) and "
                        "stopped; create it again with a larger resource_size",
                    },
                )
                await self._stop_sandbox(devbox)
                if devbox.status in _LIVE:
                    devbox.failure_reason = "out_of_memory"
                    self._transition(devbox, "failure")
                return
            self.add_log(
                devbox.id,
                {
                    "level": "error",
                    "source": "stats",
                    "message": "the devbox's sandbox exited unexpectedly; resume the devbox to start a new one",
                },
            )
            await self._stop_sandbox(devbox)
            if devbox.status in _LIVE:
                self._transition(devbox, "suspended")

    async def _stop_sandbox(self, devbox: Devbox) -> None:
        sandbox = devbox.sandbox
        if sandbox is not None:
            for hook in list(self.on_stop):
                try:
                    await hook(devbox.id)
                except Exception:  # a hook must not keep a sandbox alive
                    log.exception("on_stop hook failed for %s", devbox.id)
            devbox.sandbox = None
            await self.proxy.detach(devbox.id)
            await sandbox.stop()
        devbox.enforcement = None
        await self.limits.stop(devbox.id)

    @staticmethod
    def _launch_commands(devbox: Devbox) -> list[str]:
        """The code mounts' install commands, then the launch commands."""
        installs = [
            f"cd ~/{shlex.quote(m['repo_name'])} && {m['install_command']}"
            for m in devbox.code_mounts if m.get("install_command")
        ]  # fmt: skip
        return installs + list(devbox.launch_parameters.get("launch_commands") or [])

    async def _run_launch_commands(self, devbox: Devbox) -> bool:
        """Run the launch commands in order; False at the first that fails.

        Their output goes to a file, not a pipe: a command that starts a server in the
        background (`server &`) must not keep the devbox initializing by holding a pipe open.
        """
        commands = self._launch_commands(devbox)
        assert devbox.sandbox is not None
        setup_dir = devbox.state_dir / "setup"
        setup_dir.mkdir(exist_ok=True)
        for index, command in enumerate(commands):
            output_path = setup_dir / f"{index}.log"
            output = self.storage.open_file(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
            try:
                proc = await devbox.sandbox.spawn(
                    command,
                    env=self.command_env(devbox),
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                )
            finally:
                os.close(output)
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise
            text = _read_head(output_path, SETUP_OUTPUT_LIMIT).decode("utf-8", errors="replace")
            self.add_log(
                devbox.id,
                {
                    "level": "info" if code == 0 else "error",
                    "source": "setup_commands",
                    "cmd": command,
                    "exit_code": code,
                    "message": text,
                },
            )
            if code != 0:
                return False
        return True

    async def _start_entrypoint(self, devbox: Devbox) -> None:
        """Start the entrypoint in the background; its end (not caused by a stop) is logged and shuts the devbox down."""
        if not devbox.entrypoint or devbox.sandbox is None:
            return
        sandbox = devbox.sandbox
        output_path = devbox.state_dir / "entrypoint.log"
        output = self.storage.open_file(output_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC)
        try:
            proc = await sandbox.spawn(
                devbox.entrypoint,
                env=self.command_env(devbox),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        finally:
            os.close(output)
        start = output_path.stat().st_size

        async def watch() -> None:
            code = await proc.wait()
            if devbox.sandbox is not sandbox:
                return  # stopped with its devbox
            text = _read_tail_from(output_path, start, SETUP_OUTPUT_LIMIT).decode("utf-8", errors="replace")
            self.add_log(
                devbox.id,
                {
                    "level": "info" if code == 0 else "error",
                    "source": "entrypoint",
                    "cmd": devbox.entrypoint,
                    "exit_code": code,
                    "message": text,
                },
            )
            # The API binds a devbox's life to its entrypoint: once it has ended, the devbox shuts down.
            await self.shutdown_devbox(devbox.id, reason="entrypoint_exit")

        watcher = asyncio.ensure_future(watch())
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def suspend(self, devbox_id: str) -> Devbox:
        async with self._lock(devbox_id):
            devbox = self.get(devbox_id)
            if devbox.status != "running":
                raise ApiError(
                    400,
                    f"devbox {devbox_id} is {devbox.status}, not running; only a running devbox can be suspended",
                )
            self._transition(devbox, "suspending", refuse_unsaved=f"suspend devbox {devbox_id}")
            await self._stop_sandbox(devbox)
            self._transition(devbox, "suspended")
            return devbox

    async def resume(self, devbox_id: str) -> Devbox:
        async with self._lock(devbox_id):
            devbox = self.get(devbox_id)
            if devbox.status != "suspended":
                raise ApiError(
                    400,
                    f"devbox {devbox_id} is {devbox.status}, not suspended; only a suspended devbox can be resumed",
                )
            self._transition(devbox, "resuming", refuse_unsaved=f"resume devbox {devbox_id}")
            self._spawn_task(devbox_id, self._resume(devbox))
            return devbox

    async def _resume(self, devbox: Devbox) -> None:
        try:
            if devbox.unsafe is False and sandbox_unavailable_reason():
                raise SandboxError(sandbox_unavailable_reason() or "")
            await self._start_limits(devbox)
            if not devbox.unsafe and devbox.id_range is None and self.ids is not None:
                await self._adopt(devbox)
            await asyncio.to_thread(self._prepare_dirs_for_resume, devbox)
            await self._start_sandbox(devbox)
            await self._start_entrypoint(devbox)
            self._transition(devbox, "running")
        except asyncio.CancelledError:
            raise
        except (SandboxError, OSError, ImageError, DiskError) as exc:
            self.add_log(
                devbox.id,
                {
                    "level": "error",
                    "source": "setup_commands",
                    "message": f"the sandbox failed to resume: {exc}",
                },
            )
            await self._stop_sandbox(devbox)
            self._transition(devbox, "suspended")

    async def _adopt(self, devbox: Devbox) -> None:
        """A devbox made on the host's system (before devboxes had their own) resumes on the image,
        with its home and /tmp given to its ids in the range: its processes were host root then."""
        assert self.ids is not None
        image = await self._image(devbox)
        ids, uid = self.ids, devbox.sandbox_user.uid
        for path in (devbox.home, devbox.tmp):
            if path.is_dir() and not path.is_symlink():
                await asyncio.to_thread(rootfs.give_tree, path, ids.host_uid(uid), ids.host_gid(uid))
        devbox.id_range = [ids.uid_base, ids.gid_base, ids.count]
        devbox.image = str(image.path)
        self._save(devbox)
        await asyncio.to_thread(rootfs.prepare_first_boot, rootfs.RootFs.of(image.rootfs, devbox.writable_root),
                                ids, devbox.home, devbox.tmp, uid)  # fmt: skip
        self.add_log(devbox.id, {"source": "setup_commands", "message": f"moved onto the devbox image {image.path.name}"})

    def _prepare_dirs_for_resume(self, devbox: Devbox) -> None:
        for path in (devbox.home, devbox.tmp):
            path.mkdir(exist_ok=True)
        if devbox.disk:  # mounted now: what writes cut short by a killed backend left can go
            self._remove_partial_writes(devbox)
        ids, layers = devbox.ids, devbox.layers
        if ids is not None and layers is not None:
            if ImageStore.at(layers.image.parent) is None:
                raise SandboxError(f"the image this devbox was built on ({layers.image.parent}) is gone; create a new devbox")
            layers.prepare(ids)

    async def shutdown_devbox(self, devbox_id: str, reason: str = "api_shutdown", *, force: bool = True) -> Devbox:
        """Shut down; `force=False` (the API's default) refuses with 409 while a capture of it is in progress."""
        devbox = self.get(devbox_id)
        if not force and self._capturing.get(devbox_id):
            raise ApiError(
                409,
                f"devbox {devbox_id} has a snapshot in progress; wait for it to complete, or shut down with force=true",
            )
        task = self._tasks.get(devbox_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        async with self._lock(devbox_id):
            if devbox.status == "shutdown":
                return devbox
            await self._stop_sandbox(devbox)
            devbox.shutdown_reason = reason
            self._transition(devbox, "shutdown")
        # The disk of a shut-down devbox is gone, as on Runloop; execution records stay.
        if devbox.disk:  # home, tmp and the system's upper layer: all on it
            await asyncio.to_thread(_remove_disk, devbox)
        else:
            await asyncio.to_thread(_remove_tree, devbox.home)
            await asyncio.to_thread(_remove_tree, devbox.tmp)
        if devbox.layers is not None:  # what the devbox installed or changed in its system
            await asyncio.to_thread(devbox.layers.remove)
        if devbox.id in self._unsaved:  # shut down on a full disk: its home's space is free now
            try:
                self._save(devbox)
            except OSError as exc:
                log.warning("could not record that devbox %s is shut down: %s", devbox.id, exc)
        return devbox

    # -- tunnel ----------------------------------------------------------------------------

    async def enable_tunnel(self, devbox_id: str, config: TunnelConfig) -> Devbox:
        """Give a running devbox its one tunnel (400 when it is not running or already has one)."""
        async with self._lock(devbox_id):
            devbox = self.get(devbox_id)
            if devbox.tunnel is not None:
                raise ApiError(
                    400,
                    f"devbox {devbox_id} already has a tunnel (key {devbox.tunnel['tunnel_key']}); a devbox has "
                    "one tunnel, serving every port: use it, or remove it first (remove_tunnel)",
                )
            if devbox.status != "running":
                raise ApiError(400, not_running_message(devbox))
            devbox.tunnel = new_tunnel(config)
            self._save_or_undo(devbox, lambda: setattr(devbox, "tunnel", None), f"enable a tunnel on devbox {devbox_id}")
            self._tunnel_keys[devbox.tunnel["tunnel_key"]] = devbox.id
            return devbox

    async def remove_tunnel(self, devbox_id: str) -> None:
        """Remove the devbox's tunnel; nothing to do when it has none (a retried call succeeds)."""
        async with self._lock(devbox_id):
            devbox = self.get(devbox_id)
            if devbox.tunnel is None:
                return
            before = devbox.tunnel
            devbox.tunnel = None
            self._save_or_undo(devbox, lambda: setattr(devbox, "tunnel", before), f"remove the tunnel of devbox {devbox_id}")
            self._tunnel_keys.pop(before["tunnel_key"], None)

    def by_tunnel_key(self, key: str) -> Devbox | None:
        devbox_id = self._tunnel_keys.get(key)
        return self._devboxes.get(devbox_id) if devbox_id is not None else None

    def set_tunnel_origin(self, origin: str) -> None:
        self.tunnel_origin = origin
        for devbox in self._devboxes.values():
            devbox.tunnel_origin = origin

    # -- captures (captures.py) -------------------------------------------------------------

    def capture_path(self, kind: str, name: str) -> Path:
        """Where to keep a capture named `name` of kind `kind` ("snapshots", "blueprints"): beside the
        devbox disks, on the pool when there is one, so that clones share its blocks."""
        root = self.pool.root if self.pool is not None else self.config.data_dir / "captures"
        return root / kind / f"{name}.img"

    def capturing(self, devbox_id: str) -> bool:
        return bool(self._capturing.get(devbox_id))

    async def capture(self, devbox_id: str, dest: Path) -> DiskCapture:
        """Capture the devbox's writable filesystem at one instant into `dest` (read-only, copy-on-write).

        CaptureError when it cannot be captured now (not running or suspended, no disk of its own).
        """
        devbox = self.get(devbox_id)
        self._capturing[devbox_id] = self._capturing.get(devbox_id, 0) + 1
        try:
            async with self._lock(devbox_id):
                if devbox.status not in ("running", "suspended"):
                    raise CaptureError(f"only a running or suspended devbox can be captured; {not_running_message(devbox)}")
                if not devbox.disk:
                    raise CaptureError(f"devbox {devbox_id} has no disk of its own to capture ({devbox.disk_gap})")
                return await asyncio.to_thread(self._capture, devbox, dest)
        finally:
            self._capturing[devbox_id] -= 1
            if not self._capturing[devbox_id]:
                del self._capturing[devbox_id]

    def _capture(self, devbox: Devbox, dest: Path) -> DiskCapture:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if devbox.sandbox is not None and os.path.ismount(devbox.writable_root):
            # Processes first: a process held by the frozen filesystem could not be paused.
            if not self.limits.freeze(devbox.id):
                log.info("devbox %s: captured without pausing its processes (no freezer, or one did not stop)", devbox.id)
            try:
                with cow.frozen(devbox.writable_root):
                    shared = cow.clone(devbox.disk_image, dest)
            finally:
                self.limits.thaw(devbox.id)
        else:  # suspended: its disk is unmounted, and clean once released (a lazy unmount may lag)
            deadline = time.monotonic() + UNMOUNT_WAIT_SECONDS
            while attached(devbox.disk_image):
                if time.monotonic() > deadline:
                    raise CaptureError(f"devbox {devbox.id}'s disk is still being released after its suspend; try again")
                time.sleep(0.02)
            shared = cow.clone(devbox.disk_image, dest)
        seal(dest)
        return DiskCapture(
            image=dest,
            system_image=devbox.image,
            id_range=devbox.id_range,
            user=devbox.user,
            disk_bytes=os.stat(dest).st_size,
            used_bytes=ext4_used_bytes(dest),
            copy_on_write=shared,
        )

    # -- keep-alive ------------------------------------------------------------------------

    def keep_alive(self, devbox_id: str) -> None:
        """Push back the shutdown of a devbox created with `keep_alive_time_seconds`."""
        devbox = self.get(devbox_id)
        if devbox.status == "running":
            self._arm_keep_alive(devbox)
            self.idle.touch(devbox_id)

    def _arm_keep_alive(self, devbox: Devbox) -> None:
        seconds = devbox.launch_parameters.get("keep_alive_time_seconds")
        if not seconds or idle_policy(devbox.launch_parameters):  # an idle policy replaces it (API docs)
            return
        self._keep_alive_until[devbox.id] = time.monotonic() + float(seconds)
        if devbox.id not in self._keep_alive_timers:
            self._keep_alive_timers[devbox.id] = asyncio.ensure_future(self._keep_alive_timer(devbox))

    def _disarm_keep_alive(self, devbox_id: str) -> None:
        self._keep_alive_until.pop(devbox_id, None)
        timer = self._keep_alive_timers.pop(devbox_id, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _keep_alive_timer(self, devbox: Devbox) -> None:
        """Sleep until the deadline; a keep_alive meanwhile moved it, so sleep again until the new one."""
        while (deadline := self._keep_alive_until.get(devbox.id)) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seconds = devbox.launch_parameters.get("keep_alive_time_seconds")
                self.add_log(
                    devbox.id,
                    {
                        "level": "info",
                        "source": "stats",
                        "message": f"no keep_alive within {seconds} s: shutting down",
                    },
                )
                self._keep_alive_timers.pop(devbox.id, None)
                await self.shutdown_devbox(devbox.id, reason="keep_alive_timeout")
                return
            await asyncio.sleep(remaining)

    # -- idle ----------------------------------------------------------------------------------

    async def _on_idle(self, devbox_id: str, policy: IdlePolicy) -> None:
        """The idle time of a running devbox ran out (see `lifecycle`): suspend or shut it down."""
        devbox = self.get(devbox_id)
        if devbox.status != "running":
            return
        verb = "suspending" if policy.action == "suspend" else "shutting down"
        self.add_log(
            devbox_id,
            {"level": "info", "source": "stats", "message": f"idle for {policy.seconds} s (after_idle): {verb}"},
        )
        try:
            if policy.action == "suspend":
                await self.suspend(devbox_id)
            else:
                await self.shutdown_devbox(devbox_id, reason="idle")
        except ApiError as exc:  # it changed meanwhile (suspended, shut down) or the disk is full
            log.warning("devbox %s: could not act on its idle policy: %s", devbox_id, exc.message)

    def update(self, devbox_id: str, *, name: str | None, metadata: dict[str, str] | None) -> Devbox:
        devbox = self.get(devbox_id)
        before = (devbox.name, devbox.metadata)
        if name is not None:
            devbox.name = name
        if metadata is not None:
            devbox.metadata = dict(metadata)

        def undo() -> None:
            devbox.name, devbox.metadata = before

        self._save_or_undo(devbox, undo, f"update devbox {devbox_id}")
        return devbox

    def _save_or_undo(self, devbox: Devbox, undo: Callable[[], None], action: str) -> None:
        """Save a change the caller made to `devbox`; when the record cannot be written, `undo` it in
        memory too and refuse (a full disk: 507 saying what could not be done, `action`)."""
        try:
            self._save(devbox)
        except OSError as exc:
            undo()
            if is_disk_full(exc):
                raise disk_full(action) from None
            raise


def not_running_message(devbox: Devbox) -> str:
    ident = devbox.id
    match devbox.status:
        case "shutdown":
            return f"devbox {ident} is shutdown; create a new one"
        case "suspended":
            return f"devbox {ident} is suspended; resume it first"
        case "failure":
            return f"devbox {ident} failed ({devbox.failure_reason or 'unknown reason'}); see its logs and create a new one"
        case "provisioning" | "initializing" | "resuming" | "queued" | "scheduled":
            return f"devbox {ident} is still {devbox.status}; wait until it is running (wait_for_status)"
        case _:
            return f"devbox {ident} is {devbox.status}, not running"


def _read_tail_from(path: Path, start: int, limit: int) -> bytes:
    """Up to the last `limit` bytes written after offset `start`."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        fh.seek(max(start, end - limit))
        return fh.read(limit)


def _read_head(path: Path, limit: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _remove_disk(devbox: Devbox) -> None:
    """The image goes (its blocks with it); the mountpoint too, unless something still holds it."""
    with contextlib.suppress(OSError, DiskError):
        detach(devbox.writable_root)
    with contextlib.suppress(FileNotFoundError):
        devbox.disk_image.unlink()
    with contextlib.suppress(OSError):
        devbox.writable_root.rmdir()
