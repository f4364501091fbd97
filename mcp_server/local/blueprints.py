"""Blueprints: a devbox's filesystem built once from a recipe, to start devboxes from.

A build is a devbox (the *build devbox*, not listed among the devboxes) started on the default
image or on the base blueprint, with the blueprint's file mounts, code mounts, secrets, size
and network mode. Its steps run in it one by one through the executions machinery: the
dockerfile's (`dockerfile.py`), then each `system_setup_commands` entry as a `RUN`. Every line
they print lands in the build log with its time. When every step has succeeded the build
devbox's writable filesystem is captured (`Layers.capture`: a read-only, copy-on-write disk
snapshot) and the build devbox goes; a devbox created from the blueprint starts from that
capture, copy-on-write, with the blueprint's `ENV`s and launch parameters as its defaults. A
blueprint on a blueprint builds in a devbox started from its base's capture: a layer on a layer.

Status: queued -> provisioning (the build devbox boots) -> building (the steps) ->
build_complete, or failed with `failure_reason` build_failed (out_of_memory when the kernel
killed a step for memory) and the log saying which step and why.

One JSON file per blueprint (`data_dir/blueprints/<id>/blueprint.json`, replaced atomically)
and its log (`logs.jsonl`, appended) are the store: they survive restarts. A build the backend
stopped in the middle is failed at the next start, with a log line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from . import code_mounts as code
from . import files
from .captures import CaptureError, DiskCapture
from .clock import now_ms
from .devboxes import DevboxManager, write_json_atomic
from .dockerfile import DockerfileError, Plan, Step, parse
from .errors import ApiError, not_found
from .executions import ExecutionManager
from .ids import new_id
from .sandbox import DEFAULT_USER, ROOT_USER, SandboxUser

log = logging.getLogger("devbox_mcp.local")

STATUSES = ("queued", "provisioning", "building", "failed", "build_complete")
_BUILDING = ("queued", "provisioning", "building")
BOOT_WAIT_SECONDS = 3600.0
OUTPUT_POLL_SECONDS = 0.25  # how often a running step's new output lines reach the log
MAX_LOG_ENTRIES = 20_000
MAX_LINE = 4000  # characters of one output line kept in the log


class Layers(Protocol):
    """The storage primitive a blueprint's result is: a read-only copy-on-write capture of a devbox's
    writable filesystem, which devboxes start from (`DevboxManager.capture`, `create(base=...)`)."""

    async def capture(self, devbox_id: str, blueprint_id: str) -> dict[str, Any]:
        """Capture the (running) build devbox's filesystem; the capture's record."""
        ...

    def start_from(self, capture: dict[str, Any]) -> dict[str, Any]:
        """DevboxManager.create's arguments for a devbox that starts from the capture."""
        ...

    async def release(self, capture: dict[str, Any]) -> None:
        """The blueprint is deleted: its capture goes (blocks its devboxes share stay theirs)."""
        ...


class DiskLayers:
    """Blueprints as disk captures (`captures.py`): the build devbox's disk, cloned copy-on-write,
    kept read-only beside the devbox disks; a devbox from the blueprint clones it in turn."""

    def __init__(self, devboxes: DevboxManager) -> None:
        self.devboxes = devboxes

    async def capture(self, devbox_id: str, blueprint_id: str) -> dict[str, Any]:
        try:
            capture = await self.devboxes.capture(devbox_id, self.devboxes.capture_path("blueprints", blueprint_id))
        except CaptureError as exc:
            raise BuildFailed(f"could not capture the build's filesystem: {exc}") from None
        return capture.record()

    def start_from(self, capture: dict[str, Any]) -> dict[str, Any]:
        return {"base": DiskCapture.from_record(capture)}

    async def release(self, capture: dict[str, Any]) -> None:
        image = DiskCapture.from_record(capture).image
        await asyncio.to_thread(lambda: image.unlink(missing_ok=True))


class BuildFailed(Exception):
    def __init__(self, message: str, reason: str = "build_failed") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Blueprint:
    id: str
    name: str
    status: str
    create_time_ms: int
    directory: Path
    parameters: dict[str, Any]  # as given, without code mount tokens
    metadata: dict[str, str] = field(default_factory=dict)
    base_blueprint_id: str | None = None
    build_finish_time_ms: int | None = None
    failure_reason: str | None = None
    capture: dict[str, Any] | None = None  # what its devboxes start from (Layers)
    env: dict[str, str] = field(default_factory=dict)  # the dockerfile's ENVs: its devboxes' defaults
    build_devbox_id: str | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        """The BlueprintView of the Runloop API."""
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "state": "created",
            "create_time_ms": self.create_time_ms,
            "build_finish_time_ms": self.build_finish_time_ms,
            "parameters": self.parameters,
            "failure_reason": self.failure_reason,
            "base_blueprint_id": self.base_blueprint_id,
            "containerized_services": None,
            "is_public": False,
            "metadata": dict(self.metadata),
            "devbox_capabilities": None,
        }

    def record(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("logs", "directory")}
        return data

    @property
    def launch_parameters(self) -> dict[str, Any]:
        return dict(self.parameters.get("launch_parameters") or {})


@dataclass(frozen=True)
class BuildRequest:
    """What a build needs beyond the stored parameters: the tokens of its code mounts, in memory only."""

    code_mounts: list[code.CodeMount]
    secrets: dict[str, str]
    file_mounts: dict[str, str]
    launch_parameters: dict[str, Any]
    user: SandboxUser = DEFAULT_USER  # whose home the build devbox has: its devboxes' user


class BlueprintManager:
    def __init__(self, root: Path, devboxes: DevboxManager, executions: ExecutionManager, layers: Layers) -> None:
        self.root = root
        self.devboxes = devboxes
        self.executions = executions
        self.layers = layers
        self._blueprints: dict[str, Blueprint] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}

    # -- store -------------------------------------------------------------------------------

    async def startup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.glob("*/blueprint.json")):
            try:
                blueprint = self._load(path)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("skipping unreadable blueprint record %s: %s", path, exc)
                continue
            self._blueprints[blueprint.id] = blueprint
            if blueprint.status in _BUILDING:
                self._log(blueprint, "error", "the backend stopped while this blueprint was building; build it again")
                self._finish(blueprint, "failed", "build_failed")
                if blueprint.build_devbox_id:
                    with contextlib.suppress(ApiError):
                        await self.devboxes.shutdown_devbox(blueprint.build_devbox_id, reason="api_shutdown")

    async def shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await task

    def _load(self, path: Path) -> Blueprint:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(Blueprint)} - {"logs", "directory"}
        blueprint = Blueprint(directory=path.parent, **{k: v for k, v in data.items() if k in known})
        logs = path.parent / "logs.jsonl"
        if logs.exists():
            for line in logs.read_text(encoding="utf-8", errors="replace").splitlines()[-MAX_LOG_ENTRIES:]:
                with contextlib.suppress(ValueError):
                    blueprint.logs.append(json.loads(line))
        return blueprint

    def _save(self, blueprint: Blueprint) -> None:
        write_json_atomic(blueprint.directory / "blueprint.json", blueprint.record())

    def _log(self, blueprint: Blueprint, level: str, message: str, timestamp_ms: int | None = None) -> None:
        entry = {"level": level, "timestamp_ms": timestamp_ms or now_ms(), "message": message}
        blueprint.logs.append(entry)
        if len(blueprint.logs) > MAX_LOG_ENTRIES:
            del blueprint.logs[: len(blueprint.logs) - MAX_LOG_ENTRIES]
        try:
            with open(blueprint.directory / "logs.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError as exc:
            log.warning("could not persist a build log line of %s: %s", blueprint.id, exc)
        self._wake(blueprint)

    def _wake(self, blueprint: Blueprint) -> None:
        event = self._changed.pop(blueprint.id, None)
        if event is not None:
            event.set()

    def _set_status(self, blueprint: Blueprint, status: str) -> None:
        blueprint.status = status
        self._save(blueprint)
        self._wake(blueprint)

    def _finish(self, blueprint: Blueprint, status: str, reason: str | None = None) -> None:
        blueprint.failure_reason = reason
        blueprint.build_finish_time_ms = now_ms()
        self._set_status(blueprint, status)

    # -- lookup ------------------------------------------------------------------------------

    def all(self) -> list[Blueprint]:
        return sorted(self._blueprints.values(), key=lambda b: (b.create_time_ms, b.id))

    def get(self, blueprint_id: str) -> Blueprint:
        blueprint = self._blueprints.get(blueprint_id)
        if blueprint is None:
            raise not_found("blueprint", blueprint_id, "list blueprints to see which ids exist")
        return blueprint

    def latest(self, name: str) -> Blueprint | None:
        """The latest successful build of that name."""
        built = [b for b in self.all() if b.name == name and b.status == "build_complete"]
        return built[-1] if built else None

    def usable(self, *, blueprint_id: str | None, blueprint_name: str | None, field_prefix: str = "blueprint") -> Blueprint:
        """The built blueprint an id or a name (its latest successful build) names; 400 otherwise."""
        if blueprint_id and blueprint_name:
            raise ApiError(400, f"give {field_prefix}_id or {field_prefix}_name, not both")
        if blueprint_name:
            found = self.latest(blueprint_name)
            if found is None:
                raise ApiError(400, f"{field_prefix}_name: no blueprint named {blueprint_name!r} has built "
                                    "successfully; list blueprints to see their status")  # fmt: skip
            return found
        assert blueprint_id
        blueprint = self._blueprints.get(blueprint_id)
        if blueprint is None:
            raise ApiError(400, f"{field_prefix}_id: no blueprint {blueprint_id!r}; list blueprints to see which ids exist")
        if blueprint.status != "build_complete":
            why = f"failed ({blueprint.failure_reason}; see its logs)" if blueprint.status == "failed" else blueprint.status
            raise ApiError(400, f"{field_prefix}_id: blueprint {blueprint_id} is {why}, not build_complete")
        return blueprint

    def find(self, name_or_id: str) -> Blueprint | None:
        blueprint = self._blueprints.get(name_or_id)
        if blueprint is not None and blueprint.status == "build_complete":
            return blueprint
        return self.latest(name_or_id)

    async def wait(self, blueprint_id: str, seconds: float) -> Blueprint:
        """Until the blueprint changes (status or a log line) or `seconds` pass."""
        blueprint = self.get(blueprint_id)
        event = self._changed.setdefault(blueprint_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
        return blueprint

    # -- create and build --------------------------------------------------------------------

    def create(
        self, *, name: str, parameters: dict[str, Any], metadata: dict[str, str], base: Blueprint | None,
        request: BuildRequest,
    ) -> Blueprint:
        blueprint_id = new_id("bpt")
        directory = self.root / blueprint_id
        blueprint = Blueprint(
            id=blueprint_id, name=name, status="queued", create_time_ms=now_ms(), directory=directory,
            parameters=parameters, metadata=dict(metadata), base_blueprint_id=base.id if base else None,
        )  # fmt: skip
        directory.mkdir(parents=True, mode=0o700)
        try:
            self._save(blueprint)
        except OSError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._blueprints[blueprint_id] = blueprint
        self._log(blueprint, "info", f"queued: blueprint {name!r}")
        task = asyncio.ensure_future(self._build(blueprint, request))
        self._tasks[blueprint_id] = task
        task.add_done_callback(lambda t: self._tasks.pop(blueprint_id, None))
        return blueprint

    async def _build(self, blueprint: Blueprint, request: BuildRequest) -> None:
        devbox_id: str | None = None
        try:
            plan = self._plan(blueprint, request)
            base = self._base(blueprint, plan)
            self._set_status(blueprint, "provisioning")
            devbox_id = await self._boot(blueprint, base, request)
            self._set_status(blueprint, "building")
            for number, step in enumerate(plan.steps, 1):
                self._log(blueprint, "info", f"step {number}/{len(plan.steps)}: " + _where(step) + step.text)
                await self._step(blueprint, devbox_id, step)
            self._log(blueprint, "info", "capturing the build's filesystem")
            blueprint.capture = await self.layers.capture(devbox_id, blueprint.id)
            blueprint.env = dict(plan.env)
            self._log(blueprint, "info", f"build complete in {(now_ms() - blueprint.create_time_ms) / 1000:.1f} s")
            self._finish(blueprint, "build_complete")
        except asyncio.CancelledError:
            raise
        except (BuildFailed, DockerfileError, ApiError) as exc:  # ApiError: the build devbox was refused
            self._log(blueprint, "error", str(exc))
            self._finish(blueprint, "failed", getattr(exc, "reason", "build_failed"))
        except Exception as exc:  # a build ends failed, never stuck building
            log.exception("blueprint %s: the build failed", blueprint.id)
            self._log(blueprint, "error", f"the build failed: {exc}")
            self._finish(blueprint, "failed", "build_failed")
        finally:
            if devbox_id is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.devboxes.shutdown_devbox(devbox_id, reason="api_shutdown"))

    def _plan(self, blueprint: Blueprint, request: BuildRequest) -> Plan:
        params = blueprint.parameters
        dockerfile = params.get("dockerfile") or ""
        if dockerfile.strip():
            plan = parse(dockerfile, params.get("build_args") or {}, request.file_mounts)
        else:
            plan = Plan()
        for command in params.get("system_setup_commands") or []:
            plan.steps.append(Step("run", 0, f"RUN {command}", command=command, env=tuple(plan.env.items()),
                                   workdir=plan.workdir, user=plan.user))  # fmt: skip
        return plan

    def _base(self, blueprint: Blueprint, plan: Plan) -> Blueprint | None:
        """The blueprint the build starts from: base_blueprint_id/name, or the dockerfile's FROM."""
        given = self._blueprints.get(blueprint.base_blueprint_id) if blueprint.base_blueprint_id else None
        if plan.base is None:
            return given
        named = self.find(plan.base)
        if named is None:
            raise BuildFailed(
                f"line {plan.from_line}: FROM {plan.base}: this machine cannot fetch container images; FROM may name the default "
                f"image (devbox-mcp) or a blueprint built here (by id or name), and no built blueprint is "
                f"{plan.base!r}"
            )
        if given is not None and given.id != named.id:
            raise BuildFailed(f"FROM {plan.base} and base_blueprint {given.id} differ; give the base once")
        blueprint.base_blueprint_id = named.id
        self._save(blueprint)
        return named

    async def _boot(self, blueprint: Blueprint, base: Blueprint | None, request: BuildRequest) -> str:
        size_keys = ("resource_size_request", "custom_cpu_cores", "custom_gb_memory", "custom_disk_size",
                     "network_mode", "architecture")  # fmt: skip
        params = {k: v for k, v in request.launch_parameters.items() if k in size_keys}
        if base is not None:
            self._log(blueprint, "info", f"starting the build devbox from blueprint {base.id} ({base.name})")
        devbox = self.devboxes.create(
            name=f"build of blueprint {blueprint.id}", environment_variables={}, launch_parameters=params,
            # On a base, the home is the base's: the files are written once the devbox runs.
            metadata={}, file_mounts=request.file_mounts if base is None else {}, secrets=request.secrets,
            code_mounts=request.code_mounts, user=request.user,
            build_for=blueprint.id, **self._start_from(base),
        )  # fmt: skip
        blueprint.build_devbox_id = devbox.id
        self._save(blueprint)
        devbox = await self.devboxes.wait_for_status(
            devbox.id, ("running", "failure", "shutdown", "suspended"), BOOT_WAIT_SECONDS
        )
        for entry in self.devboxes.logs(devbox.id):
            if entry.get("source") == "setup_commands":
                text = entry.get("message") or ""
                if entry.get("cmd"):
                    text = f"$ {entry['cmd']} (exit {entry.get('exit_code')})\n{text}".rstrip()
                self._log(blueprint, entry.get("level", "info"), text, entry.get("timestamp_ms"))
        if devbox.status != "running":
            raise BuildFailed(f"the build devbox did not start ({devbox.failure_reason or devbox.status}); see the lines above")
        if base is not None:
            for path, contents in request.file_mounts.items():
                await files.write(devbox, files.check_path(path, "file_mounts path"), contents.encode())
        return devbox.id

    def _start_from(self, base: Blueprint | None) -> dict[str, Any]:
        return {} if base is None else self.start_from(base)

    def start_from(self, blueprint: Blueprint) -> dict[str, Any]:
        """DevboxManager.create's arguments for a devbox that starts from the blueprint."""
        assert blueprint.capture is not None
        return {"blueprint_id": blueprint.id, **self.layers.start_from(blueprint.capture)}

    async def _step(self, blueprint: Blueprint, devbox_id: str, step: Step) -> None:
        where = _where(step)
        script = _script(step, self.devboxes.get(devbox_id).sandbox_user.home)
        ex = await self.executions.start(devbox_id, script, user=ROOT_USER)
        offset = 0
        pending = b""
        path = ex.path("stdout")
        while True:
            finished = ex.done.is_set()
            chunk = await asyncio.to_thread(_read_from, path, offset)
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._log(blueprint, "info", line.decode("utf-8", errors="replace")[:MAX_LINE])
            if finished:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ex.done.wait(), OUTPUT_POLL_SECONDS)
        if pending:
            self._log(blueprint, "info", pending.decode("utf-8", errors="replace")[:MAX_LINE])
        status = ex.record.exit_status
        if status != 0:
            if ex.record.killed_for == "out_of_memory":
                raise BuildFailed(f"{where}{step.text}: killed for want of memory (exit {status})", "out_of_memory")
            raise BuildFailed(f"{where}{step.text}: exited with status {status}")

    # -- delete ------------------------------------------------------------------------------

    def dependents(self, blueprint: Blueprint) -> list[str]:
        """What depends on the blueprint: blueprints built on it, devboxes from it not shut down."""
        out = [f"blueprint {b.id}" for b in self.all() if b.base_blueprint_id == blueprint.id and b.id != blueprint.id]
        out += [
            f"devbox {d.id}" for d in self.devboxes.all()
            if d.blueprint_id == blueprint.id and d.status not in ("shutdown", "failure")
        ]  # fmt: skip
        return out

    async def delete(self, blueprint_id: str, extra_dependents: list[str] | None = None) -> None:
        blueprint = self.get(blueprint_id)
        dependents = self.dependents(blueprint) + list(extra_dependents or [])
        if dependents:
            raise ApiError(
                409,
                f"blueprint {blueprint_id} cannot be deleted: {', '.join(dependents[:20])} "
                f"{'depend' if len(dependents) > 1 else 'depends'} on it; delete or shut those down first",
            )
        task = self._tasks.get(blueprint_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        del self._blueprints[blueprint_id]
        if blueprint.capture:
            await self.layers.release(blueprint.capture)
        await asyncio.to_thread(shutil.rmtree, blueprint.directory, True)


def _where(step: Step) -> str:
    return f"line {step.line}: " if step.line else ""


def _read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read()


def _script(step: Step, home: str) -> str:
    """The shell command one build step runs as (root) in the build devbox."""
    q = shlex.quote
    merged = "exec 2>&1; "  # one stream: the log keeps the order the lines came in
    exports = "".join(f"export {name}={q(value)}; " for name, value in step.env)
    if step.kind == "workdir":
        return f"{merged}mkdir -p -- {q(step.workdir)}"
    if step.kind == "user":
        return f"{merged}id -u -- {q(step.user)} >/dev/null"
    owner = "" if step.user in ("root", "0") else f" && chown -R -- {q(step.user)} {q(step.dest)}"
    if step.kind == "copy":
        source = step.source if step.source.startswith("/") else f"{home}/{step.source.removeprefix('~/')}"
        return f"{merged}mkdir -p -- \"$(dirname -- {q(step.dest)})\" && cp -a -- {q(source)} {q(step.dest)}{owner}"
    command = f"/bin/bash -c {q(step.command)}"
    if step.user not in ("root", "0"):
        command = f"runuser -u {q(step.user)} -- {command}"
    return f"{merged}{exports}mkdir -p -- {q(step.workdir)} && cd -- {q(step.workdir)} && exec {command}"
