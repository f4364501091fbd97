"""Devbox lifecycle tools: create (waiting until running, with each transition as progress),
list, get, shutdown, suspend, resume. Create and get also say the devbox's size, the limits this
host cannot enforce (embedded backend), and, for get, its usage."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import BaseModel, ConfigDict, Field

from .. import budgets
from ..runloop import (
    DevboxStatus,
    DevboxUsage,
    DevboxView,
    NetworkPolicyView,
    RunloopClient,
    RunloopError,
    WaitTimeout,
)
from ..runloop.models import DEVBOX_TERMINAL_STATUSES
from .common import (
    DevboxId,
    EnvName,
    EnvVars,
    Id,
    annotations,
    api_errors,
    as_map,
    at_most,
    page_text,
    result,
    state,
    unique_map,
)
from .tunnels import tunnel_text

# Where waiting for a devbox to run ends: running, or a status it does not come back from.
READY = ("running", *sorted(DEVBOX_TERMINAL_STATUSES))
SIZES = Literal["X_SMALL", "SMALL", "MEDIUM", "LARGE", "X_LARGE", "XX_LARGE", "CUSTOM_SIZE"]
CUSTOM_FIELDS = ("custom_cpu_cores", "custom_gb_memory", "custom_disk_size")


class DevboxState(BaseModel):
    """What a lifecycle call (shutdown, suspend, resume) changed: where the devbox is now, and why."""

    id: str
    status: str
    failure_reason: str | None = None
    shutdown_reason: str | None = None


class DevboxInfo(BaseModel):
    id: str
    status: str
    name: str | None = None
    network_mode: str | None = None
    created_at_ms: int | None = None
    failure_reason: str | None = None
    shutdown_reason: str | None = None


class DevboxSized(DevboxInfo):
    size: str | None = None  # and the limits this host cannot enforce, if any
    reach: str | None = None  # what its network reaches (network_mode, network policy)


class DevboxDetails(DevboxSized):
    # Only here, not in every devbox result: tools/list stays under its budget (create's caller knows it).
    user: str | None = None  # who commands run as, when not `user`
    idle_timeout_seconds: int | None = None
    on_idle: str | None = None
    usage: str | None = None
    tunnel: str | None = None  # its URL, {port} to fill


class SecretRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    env_var: EnvName
    secret_name: str


class DevboxList(BaseModel):
    devboxes: list[DevboxInfo]
    has_more: bool  # call again with starting_after = last id


def devbox_state(view: DevboxView) -> DevboxState:
    return DevboxState(
        id=view.id, status=view.status, failure_reason=view.failure_reason, shutdown_reason=view.shutdown_reason
    )


def info(view: DevboxView) -> DevboxInfo:
    return DevboxInfo(
        id=view.id,
        status=view.status,
        name=view.name,
        network_mode=view.launch_parameters.get("network_mode"),
        created_at_ms=view.create_time_ms,
        failure_reason=view.failure_reason,
        shutdown_reason=view.shutdown_reason,
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def size_of(view: DevboxView) -> str | None:
    """The size in one line: the limits the embedded backend reports (and any it cannot enforce),
    else the size asked for."""
    res = view.model_extra.get("resources") if view.model_extra else None
    lp = view.launch_parameters
    size = lp.get("resource_size_request")
    if isinstance(res, dict) and res.get("size"):
        size = (
            f"{res['size']}: {res['cpu_cores']:g} CPU, {res['memory_gib']} GiB memory, {res['disk_gib']} GiB disk, "
            f"{res['max_processes']} processes"
        )
        gaps = [f"{k} ({v})" for k, v in (res.get("not_enforced") or {}).items()]
        if gaps:
            size += "; not enforced on this host: " + "; ".join(gaps)
        if res.get("notes"):
            size += "; " + "; ".join(res["notes"])
    elif size == "CUSTOM_SIZE":
        size += ": " + ", ".join(f"{k[7:]}={lp[k]}" for k in CUSTOM_FIELDS if lp.get(k) is not None)
    return size


def usage_of(view: DevboxView, usage: DevboxUsage) -> str:
    """Active and elapsed time, what they bill, and (embedded backend) what the devbox uses now."""
    used = (
        f"active {usage.total_active_seconds} s of {usage.total_elapsed_seconds} s: {usage.vcpu_seconds} vCPU-s, "
        f"{usage.memory_gb_seconds} GB-s memory, {usage.disk_gb_seconds} GB-s disk"
    )
    res = view.model_extra.get("resources") if view.model_extra else None
    if isinstance(res, dict) and "memory_used_bytes" in res:
        now = [f"{_gib(res['memory_used_bytes'])} memory"]
        if "disk_used_bytes" in res:
            now.append(f"{_gib(res['disk_used_bytes'])} disk")
        if "cpu_seconds" in res:
            now.append(f"{res['cpu_seconds']:.1f} CPU-s")
        used += "; in use now: " + ", ".join(now)
    return used


def details(view: DevboxView, usage: DevboxUsage | None = None, reach: str | None = None) -> DevboxDetails:
    """`info` plus the account commands run as, the size, the idle policy (`lifecycle.after_idle`, or the older top-level
    `after_idle`) and the usage."""
    params = view.launch_parameters
    idle: dict[str, Any] = (params.get("lifecycle") or {}).get("after_idle") or params.get("after_idle") or {}
    return DevboxDetails(
        **info(view).model_dump(),
        user=_user_of(view),
        size=size_of(view),
        reach=reach,
        idle_timeout_seconds=idle.get("idle_time_seconds"),
        on_idle=idle.get("on_idle"),
        usage=usage_of(view, usage) if usage is not None else None,
        tunnel=tunnel_text(view.tunnel, "{port}", with_token=False) if view.tunnel else None,
    )


def secret_map(refs: list[SecretRef] | None) -> dict[str, str] | None:
    """`{ENV_VAR: secret_name}` for the `[{env_var, secret_name}]` argument; a variable given twice is refused."""
    pairs = None if refs is None else [(ref.env_var, ref.secret_name) for ref in refs]
    return unique_map("secrets", pairs, key="variable")


_REPOSITORY = re.compile(r"^([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?(?:@([A-Za-z0-9_./+-]+))?$")


def _starting_points(blueprint: str | None, repositories: list[str] | None) -> dict[str, Any]:
    """The create fields for a blueprint (an id, `bpt_...`, or a name: its latest build) and code mounts."""
    extra: dict[str, Any] = {}
    if blueprint:
        extra["blueprint_id" if blueprint.startswith("bpt_") else "blueprint_name"] = blueprint
    mounts = []
    for index, repository in enumerate(repositories or []):
        match = _REPOSITORY.match(repository)
        if match is None:
            raise ToolError(f"repositories[{index}]: give owner/name or owner/name@ref (a branch or tag)")
        owner, name, ref = match.groups()
        mounts.append({"repo_owner": owner, "repo_name": name} | ({"git_ref": ref} if ref else {}))
    if mounts:
        extra["code_mounts"] = mounts
    return extra


def _user_of(view: DevboxView) -> str | None:
    user = view.launch_parameters.get("user_parameters")
    return user.get("username") if isinstance(user, dict) else None


ROOT = {"username": "root", "uid": 0}


async def wait_running(ctx: Context, view: DevboxView) -> DevboxView:
    """Follow the devbox to running (or failure/shutdown), reporting each new status as progress."""
    app = state(ctx)
    start = time.monotonic()
    steps = 1
    await ctx.report_progress(steps, None, f"devbox {view.id}: {view.status}")
    if view.status in READY:
        return view
    last_status = view.status
    devbox_id = view.id
    hold = budgets.boot_seconds(ctx, app.settings)
    with api_errors("waiting for the devbox to run"):
        try:
            watch = app.client.watch_devbox(devbox_id, READY, timeout_seconds=hold, current=view)
            async for view in watch:  # noqa: B020 - the watch started from the view it replaces
                if view.status != last_status:
                    steps += 1
                    last_status = view.status
                    elapsed = time.monotonic() - start
                    await ctx.report_progress(steps, None, f"devbox {view.id}: {view.status} ({elapsed:.1f} s)")
        except WaitTimeout as exc:
            if hold >= app.settings.boot_timeout or not isinstance(exc.last, DevboxView):
                raise
            # The client's timeout is near (budgets.py): hand the devbox back still booting.
            return exc.last
    return view


PUBLIC_ONLY = "public internet only (no private, link-local or host addresses)"


def reach_of(view: DevboxView, policy: NetworkPolicyView | None) -> str:
    """What the devbox's network reaches, in one line: its mode, or its policy's rules."""
    mode = view.launch_parameters.get("network_mode")
    if mode == "none":
        return "nothing: no network"
    if mode == "host":
        return "everything the host reaches (network_mode host)"
    if policy is None or policy.egress.allow_all:
        return PUBLIC_ONLY
    if not policy.egress.allowed_hostnames:
        return f"nothing: network policy {policy.id} allows no host"
    return f"HTTP(S) via proxy to {', '.join(policy.egress.allowed_hostnames)} only (policy {policy.id})"


async def policy_of(client: RunloopClient, view: DevboxView) -> NetworkPolicyView | None:
    policy_id = view.launch_parameters.get("network_policy_id")
    return await client.get_network_policy(policy_id) if policy_id else None


async def policy_for(client: RunloopClient, network_policy: str | list[str]) -> str:
    """The id of the policy to apply: the one named, or one allowing exactly these hosts (made once, then reused)."""
    if isinstance(network_policy, str):
        return network_policy
    hosts = sorted({h.strip().lower() for h in network_policy})
    name = "mcp-allow-" + hashlib.sha256("\n".join(hosts).encode()).hexdigest()[:16]
    for policy in (await client.list_network_policies(name=name, limit=5)).network_policies:
        if policy.name == name:
            return policy.id
    made = await client.create_network_policy(
        name=name, allowed_hostnames=hosts, description="made by devbox-mcp's create_devbox"
    )
    return made.id


async def create_devbox(
    ctx: Context,
    name: Annotated[str | None, at_most(256)] = None,
    environment_variables: Annotated[EnvVars | None, Field(description="env of every command")] = None,
    launch_commands: Annotated[list[str] | None, Field(description="run once at start-up"), at_most(50)] = None,
    network_mode: Annotated[
        Literal["isolated", "none", "host"] | None, Field(description="embedded backend only")
    ] = None,
    secrets: Annotated[
        list[SecretRef] | None, Field(description="env vars from stored secrets"), at_most(100)
    ] = None,
    idle_timeout_seconds: Annotated[int | None, Field(ge=1)] = None,  # unused this long: on_idle
    on_idle: Literal["suspend", "shutdown"] = "suspend",
    run_as_root: Annotated[bool | None, Field(description="else `user`, who has sudo")] = None,
    resource_size: Annotated[
        SIZES | None,
        Field(description="0.5-8 CPUs, 1-32 GiB (default SMALL); CUSTOM_SIZE: custom_*"),
    ] = None,
    custom_cpu_cores: float | None = None,
    custom_gb_memory: int | None = None,
    custom_disk_size: int | None = None,
    network_policy: Annotated[
        str | list[str] | None, Field(description="policy id, or hostnames to allow (*.x ok)")
    ] = None,
    blueprint: Annotated[str | None, Field(description="id or name"), at_most(256)] = None,
    repositories: Annotated[list[str] | None, Field(description="owner/name[@ref]"), at_most(20)] = None,
    snapshot_id: Id | None = None,
) -> DevboxSized:
    """Create a Linux devbox and wait until it runs (status as progress; cancel shuts it down);
    near the client's timeout it returns it still starting."""
    app = state(ctx)
    sized = {"resource_size_request": resource_size, "custom_cpu_cores": custom_cpu_cores,
             "custom_gb_memory": custom_gb_memory, "custom_disk_size": custom_disk_size}  # fmt: skip
    with api_errors():
        policy_id = await policy_for(app.client, network_policy) if network_policy is not None else None
        view = await app.client.create_devbox(
            name=name,
            environment_variables=as_map("environment_variables", environment_variables),
            launch_commands=launch_commands,
            network_mode=network_mode,
            secrets=secret_map(secrets),
            idle_timeout_seconds=idle_timeout_seconds,
            on_idle=on_idle,
            launch_parameters={k: v for k, v in sized.items() if v is not None}
            | ({"user_parameters": ROOT} if run_as_root else {})
            | ({"network_policy_id": policy_id} if policy_id else {}),
            extra=_starting_points(blueprint, repositories) | ({"snapshot_id": snapshot_id} if snapshot_id else {}),
        )
    try:
        view = await wait_running(ctx, view)
    except anyio.get_cancelled_exc_class():
        # The caller gave up on it: a devbox nobody holds the id of would run (and cost)
        # until its idle timeout. Shut it down, as a cancelled execute kills its command.
        with anyio.CancelScope(shield=True), anyio.move_on_after(app.settings.kill_timeout):
            try:
                await app.client.shutdown_devbox(view.id)
            except RunloopError:
                pass
        raise
    if view.status in DEVBOX_TERMINAL_STATUSES:
        reason = view.failure_reason or view.shutdown_reason or "no reason given"
        raise ToolError(f"devbox {view.id} did not start: it is {view.status} ({reason}); check launch_commands")
    await state(ctx).resources.list_changed()
    with api_errors():
        reach = reach_of(view, await policy_of(app.client, view))
    return DevboxSized(**info(view).model_dump(), size=size_of(view), reach=reach)


async def list_devboxes(
    ctx: Context,
    status: DevboxStatus | None = None,
    limit: Annotated[int, Field(ge=1, le=100)] = 20,
    starting_after: Annotated[DevboxId | None, Field(description="last id of the previous page")] = None,
) -> Annotated[CallToolResult, DevboxList]:
    """List devboxes (a page at a time)."""
    with api_errors():
        page = await state(ctx).client.list_devboxes(status=status, limit=limit, starting_after=starting_after)
    listing = DevboxList(devboxes=[info(d) for d in page.devboxes], has_more=page.has_more)
    lines = [f"{d.id}  {d.status}  {d.name or ''}".rstrip() for d in listing.devboxes]
    return result(listing, page_text("devbox", lines, listing.has_more, listing.devboxes[-1].id if lines else None))


async def get_devbox(ctx: Context, devbox_id: DevboxId) -> DevboxDetails:
    """Get a devbox's status, size, limits, network reach, idle policy and usage."""
    client = state(ctx).client
    with api_errors():
        view = await client.get_devbox(devbox_id)
    try:
        usage = await client.devbox_usage(devbox_id)
    except RunloopError:
        usage = None  # the details stand without it
    try:
        reach = reach_of(view, await policy_of(client, view))
    except RunloopError:
        reach = None
    return details(view, usage, reach)


async def shutdown_devbox(ctx: Context, devbox_id: DevboxId) -> DevboxState:
    """Shut a devbox down for good: its processes stop, its files are gone."""
    with api_errors():
        view = await state(ctx).client.shutdown_devbox(devbox_id)
    await state(ctx).resources.list_changed()
    return devbox_state(view)


async def suspend_devbox(ctx: Context, devbox_id: DevboxId) -> DevboxState:
    """Suspend a running devbox, keeping its files; resume_devbox brings it back."""
    with api_errors():
        view = await state(ctx).client.suspend_devbox(devbox_id)
    await state(ctx).resources.list_changed()
    return devbox_state(view)


async def resume_devbox(ctx: Context, devbox_id: DevboxId) -> DevboxState:
    """Resume a suspended devbox and wait until it runs."""
    with api_errors():
        view = await state(ctx).client.resume_devbox(devbox_id)
    view = await wait_running(ctx, view)
    await state(ctx).resources.list_changed()
    return devbox_state(view)


def register(server: MCPServer) -> None:
    server.add_tool(create_devbox, annotations=annotations())
    server.add_tool(list_devboxes, annotations=annotations(read_only=True, idempotent=True))
    server.add_tool(get_devbox, annotations=annotations(read_only=True, idempotent=True))
    server.add_tool(shutdown_devbox, annotations=annotations(destructive=True, idempotent=True))
    server.add_tool(suspend_devbox, annotations=annotations(idempotent=True))
    server.add_tool(resume_devbox, annotations=annotations(idempotent=True))
