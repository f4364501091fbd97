"""Disk snapshots: named, durable captures of a devbox's disk (captures.py), and forks made from one.

One JSON record per snapshot (`data_dir/snapshots/<id>.json`, replaced atomically) and its image
(`DevboxManager.capture_path("snapshots", id)`, on the copy-on-write pool) outlive the devbox
and backend restarts. A snapshot is `in_progress` until its capture is made, then `complete`
(or `error` with a message); deleting it keeps the record as `deleted` (for the status endpoint)
and frees the image's blocks no devbox disk still shares. A snapshot that devboxes (not shut
down) were started from, or that something registered in `dependents` (blueprints) uses, is not
deleted: 409 naming them.

A snapshot in progress at a backend restart ended with the old backend: it is recorded as an
error. `size_bytes` is the bytes in use on the disk beyond what was in use when the devbox first
started: the empty disk's, or its base snapshot's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .captures import CaptureError, DiskCapture
from .clock import now_ms
from .devboxes import Devbox, DevboxManager, write_json_atomic
from .errors import ApiError, disk_full, is_disk_full
from .ids import new_id

log = logging.getLogger("devbox_mcp.local")

COMMIT_MESSAGE_LIMIT = 1000
FORK_MAX = 16
FORK_WAIT_SECONDS = 60.0


@dataclass
class Snapshot:
    id: str
    source_devbox_id: str
    create_time_ms: int
    status: str = "in_progress"  # in_progress | complete | error | deleted
    name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    commit_message: str | None = None
    source_blueprint_id: str | None = None
    size_bytes: int | None = None
    error_message: str | None = None
    capture: dict[str, Any] | None = None  # DiskCapture.record() once complete

    def view(self) -> dict[str, Any]:
        """DevboxDiskSnapshotView."""
        return {
            "id": self.id,
            "name": self.name,
            "create_time_ms": self.create_time_ms,
            "metadata": dict(self.metadata),
            "source_devbox_id": self.source_devbox_id,
            "source_blueprint_id": self.source_blueprint_id,
            "commit_message": self.commit_message,
            "size_bytes": self.size_bytes,
        }

    def status_view(self) -> dict[str, Any]:
        """DevboxSnapshotAsyncStatusView."""
        view: dict[str, Any] = {"status": self.status}
        if self.status == "complete":
            view["snapshot"] = self.view()
        if self.error_message:
            view["error_message"] = self.error_message
        return view


def check_request(name: str | None, metadata: dict[str, str] | None, commit_message: str | None) -> None:
    if commit_message is not None and len(commit_message) > COMMIT_MESSAGE_LIMIT:
        raise ApiError(400, f"commit_message is {len(commit_message)} characters; at most {COMMIT_MESSAGE_LIMIT}")
    for text, what in ((name, "name"), (commit_message, "commit_message"), *((k, "metadata key") for k in metadata or {})):
        if text is not None and "\x00" in text:
            raise ApiError(400, f"{what} contains a NUL character")


class SnapshotStore:
    """Every disk snapshot of one backend."""

    def __init__(self, devboxes: DevboxManager) -> None:
        self.devboxes = devboxes
        self.root = devboxes.config.data_dir / "snapshots"
        self._snapshots: dict[str, Snapshot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Each returns what (besides devboxes) uses a snapshot, e.g. ["blueprint bpt_..."].
        self.dependents: list[Callable[[str], list[str]]] = []

    async def startup(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in sorted(self.root.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                snapshot = Snapshot(**data)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping unreadable snapshot record %s: %s", path, exc)
                continue
            self._snapshots[snapshot.id] = snapshot
            if snapshot.status == "in_progress":
                snapshot.status, snapshot.error_message = "error", "the backend stopped while the snapshot was being made"
                self._discard_image(snapshot)
                self._save(snapshot)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    # -- records -------------------------------------------------------------------------------

    def _save(self, snapshot: Snapshot) -> None:
        write_json_atomic(self.root / f"{snapshot.id}.json", asdict(snapshot))

    def get(self, snapshot_id: str, *, include_deleted: bool = False) -> Snapshot:
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is None or (snapshot.status == "deleted" and not include_deleted):
            raise ApiError(404, f"snapshot {snapshot_id!r} not found; list snapshots to see which ids exist")
        return snapshot

    def all(self) -> list[Snapshot]:
        """Newest first, without the deleted ones."""
        live = [s for s in self._snapshots.values() if s.status != "deleted"]
        return sorted(live, key=lambda s: (s.create_time_ms, s.id), reverse=True)

    def base_of(self, snapshot_id: str) -> DiskCapture:
        """What a devbox created with `snapshot_id` starts from (400 unless the snapshot is complete)."""
        snapshot = self._snapshots.get(snapshot_id)
        if snapshot is None or snapshot.status == "deleted":
            raise ApiError(400, f"snapshot_id: no snapshot {snapshot_id!r}; list snapshots to see which ids exist")
        if snapshot.status != "complete" or snapshot.capture is None:
            detail = f": {snapshot.error_message}" if snapshot.error_message else ""
            raise ApiError(400, f"snapshot_id: snapshot {snapshot_id} is {snapshot.status}{detail}; use a complete one")
        return DiskCapture.from_record(snapshot.capture)

    # -- making ------------------------------------------------------------------------------

    def begin(self, devbox_id: str, *, name: str | None, metadata: dict[str, str] | None,
              commit_message: str | None) -> Snapshot:  # fmt: skip
        """Record a snapshot of the devbox as in progress (400 when it cannot be taken now)."""
        devbox = self.devboxes.get(devbox_id)
        check_request(name, metadata, commit_message)
        if devbox.status not in ("running", "suspended"):
            raise ApiError(400, f"only a running or suspended devbox can be snapshotted; devbox {devbox_id} is {devbox.status}")
        if not devbox.disk:
            raise ApiError(400, f"devbox {devbox_id} has no disk of its own to snapshot ({devbox.disk_gap})")
        snapshot = Snapshot(
            id=new_id("snp"),
            source_devbox_id=devbox_id,
            create_time_ms=now_ms(),
            name=name,
            metadata=dict(metadata or {}),
            commit_message=commit_message,
            source_blueprint_id=getattr(devbox, "blueprint_id", None),
        )
        try:
            self._save(snapshot)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(f"snapshot devbox {devbox_id}") from None
            raise
        self._snapshots[snapshot.id] = snapshot
        return snapshot

    async def make(self, snapshot: Snapshot) -> Snapshot:
        """Capture the snapshot's devbox; the snapshot ends complete or error."""
        devbox = self.devboxes.get(snapshot.source_devbox_id)
        dest = self.devboxes.capture_path("snapshots", snapshot.id)
        try:
            capture = await self.devboxes.capture(devbox.id, dest)
        except CaptureError as exc:
            snapshot.status, snapshot.error_message = "error", str(exc)
        except OSError as exc:
            log.warning("snapshot %s of %s failed: %s", snapshot.id, devbox.id, exc)
            snapshot.status = "error"
            snapshot.error_message = "the disk is full" if is_disk_full(exc) else f"the capture failed: {exc.strerror or exc}"
            self._discard_image(snapshot)
        else:
            snapshot.capture = capture.record()
            snapshot.size_bytes = max(0, capture.used_bytes - (devbox.base_used_bytes or 0))
            snapshot.status = "complete"
        with contextlib.suppress(OSError):
            self._save(snapshot)
        return snapshot

    def make_in_background(self, snapshot: Snapshot) -> None:
        task = asyncio.ensure_future(self.make(snapshot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- changing -----------------------------------------------------------------------------

    def update(self, snapshot_id: str, *, name: str | None, metadata: dict[str, str] | None,
               commit_message: str | None) -> Snapshot:  # fmt: skip
        snapshot = self.get(snapshot_id)
        check_request(name, metadata, commit_message)
        before = (snapshot.name, snapshot.metadata, snapshot.commit_message)
        if name is not None:
            snapshot.name = name
        if metadata is not None:
            snapshot.metadata = dict(metadata)
        if commit_message is not None:
            snapshot.commit_message = commit_message
        try:
            self._save(snapshot)
        except OSError as exc:
            snapshot.name, snapshot.metadata, snapshot.commit_message = before
            if is_disk_full(exc):
                raise disk_full(f"update snapshot {snapshot_id}") from None
            raise
        return snapshot

    def users(self, snapshot_id: str) -> list[str]:
        """What depends on the snapshot: devboxes started from it that are not shut down, and the rest."""
        found = [f"devbox {d.id}" for d in self.devboxes.all() if d.snapshot_id == snapshot_id and d.status != "shutdown"]
        for dependents in self.dependents:
            found.extend(dependents(snapshot_id))
        return found

    async def delete(self, snapshot_id: str) -> None:
        snapshot = self.get(snapshot_id)
        if snapshot.status == "in_progress":
            raise ApiError(409, f"snapshot {snapshot_id} is still in progress; only a finished snapshot can be deleted")
        users = self.users(snapshot_id)
        if users:
            raise ApiError(
                409, f"snapshot {snapshot_id} is in use by {', '.join(users)}; shut those down (or delete them) first"
            )
        previous = snapshot.status
        snapshot.status = "deleted"
        try:
            self._save(snapshot)
        except OSError as exc:
            snapshot.status = previous
            if is_disk_full(exc):
                raise disk_full(f"delete snapshot {snapshot_id}") from None
            raise
        await asyncio.to_thread(self._discard_image, snapshot)

    def _discard_image(self, snapshot: Snapshot) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.devboxes.capture_path("snapshots", snapshot.id).unlink()

    # -- forks --------------------------------------------------------------------------------

    async def fork(self, devbox_id: str, count: int, name_prefix: str | None) -> list[Devbox]:
        """`count` new running devboxes from one consistent capture of the devbox (ours: POST .../fork).

        The capture is not kept: each fork's disk is a clone of it, and it is deleted once they
        are made. The forks get the source's environment, secrets, size, user and entrypoint;
        launch commands are not run again (their effects are on the disk).
        """
        source = self.devboxes.get(devbox_id)
        if source.status != "running":
            raise ApiError(400, f"only a running devbox can be forked; devbox {devbox_id} is {source.status}")
        if not source.disk:
            raise ApiError(400, f"devbox {devbox_id} has no disk of its own to fork ({source.disk_gap})")
        dest = self.devboxes.capture_path("forks", new_id("frk"))
        try:
            try:
                capture = await self.devboxes.capture(devbox_id, dest)
            except CaptureError as exc:
                raise ApiError(400, str(exc)) from None
            prefix = name_prefix or f"{source.name or source.id}-fork"
            params = {k: v for k, v in source.launch_parameters.items() if k not in ("launch_commands", "sandbox")}
            forks = [
                self.devboxes.create(
                    name=f"{prefix}-{index + 1}",
                    environment_variables=source.environment_variables,
                    launch_parameters=params,
                    metadata=source.metadata,
                    entrypoint=source.entrypoint,
                    secrets=source.secrets,
                    user=source.sandbox_user,
                    base=capture,
                )
                for index in range(count)
            ]
            await asyncio.gather(
                *(
                    self.devboxes.wait_for_status(f.id, ("running", "failure", "shutdown", "suspended"), FORK_WAIT_SECONDS)
                    for f in forks
                ),
                return_exceptions=True,
            )
            return forks
        finally:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()


_METADATA_FILTER = re.compile(r"^metadata\[([^\[\]]+)\](\[in\])?$")


def metadata_filters(query: list[tuple[str, str]]) -> list[tuple[str, set[str]]]:
    """`metadata[key]=v` and `metadata[key][in]=a,b` query parameters as (key, accepted values)."""
    filters = []
    for name, value in query:
        match = _METADATA_FILTER.match(name)
        if match is None:
            continue
        values = {v for v in value.split(",")} if match.group(2) else {value}
        filters.append((match.group(1), values))
    return filters


def metadata_matches(metadata: dict[str, str], filters: list[tuple[str, set[str]]]) -> bool:
    return all(metadata.get(key) in values for key, values in filters)
