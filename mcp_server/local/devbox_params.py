"""The devbox create body: each field the API defines is honoured or refused, here, in one place.

Nothing is silently ignored. A field the embedded backend cannot honour is refused with a 400
that names it and says what to do instead; a field the API does not define at all (a typo, a
field of another API) is refused too, as the API's own schemas forbid extra properties. Type
errors are 400s naming the field, from the published schema (`validation`, checked first) or the
models, as everywhere. Left in as null, `{}`, `[]` or `false`, a field asks for nothing and is
accepted.

Honoured: name, environment_variables, secrets, file_mounts, mounts of type `file_mount`,
entrypoint, metadata, tunnel (tunnels.py), and launch_parameters.{launch_commands, keep_alive_time_seconds,
after_idle, lifecycle.after_idle, lifecycle.resume_triggers.http (a tunnel's wake), architecture (the host's), provisioning_tier `standard`,
available_ports (deprecated: the API itself ignores it), network_mode (our extension),
user_parameters (the account commands run as: root, `user` or another, see `launch_user`),
resource_size_request and custom_cpu_cores / custom_gb_memory / custom_disk_size (checked
against ResourceSize's rules by `sizes.resolve`, enforced by `limits`)}.
The rest is refused (see `refusals`; the README lists them).
"""

from __future__ import annotations

import platform
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from .errors import ApiError
from .sandbox import DEFAULT_USER, ROOT_USER, SandboxUser
from .tunnels import TunnelConfig

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_IDLE_SECONDS = 2**31 - 1  # the API's int32


def _no_nul(what: str, text: str) -> str:
    """A NUL cannot reach a process (argv and environment are C strings): refuse it up front."""
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character, which a command or its environment cannot hold")
    return text


class _Params(BaseModel):
    # Kept, then refused by `unknown_fields` with a message that says what to do (pydantic's
    # "extra inputs are not permitted" would not).
    model_config = ConfigDict(extra="allow")


class IdleConfig(_Params):
    idle_time_seconds: StrictInt = Field(ge=1, le=MAX_IDLE_SECONDS)
    on_idle: Literal["shutdown", "suspend"]


class ResumeTriggers(_Params):
    http: StrictBool | None = None
    axon_event: StrictBool | None = None


class LifecycleHooks(_Params):
    suspend_commands: list[StrictStr] | None = None
    suspend_deadline_ms: StrictInt | None = None


class Lifecycle(_Params):
    after_idle: IdleConfig | None = None
    resume_triggers: ResumeTriggers | None = None
    lifecycle_hooks: LifecycleHooks | None = None


class LaunchParameters(_Params):
    launch_commands: list[str] | None = None
    # Our extension: isolated (own network namespace, outbound via slirp4netns), none, or host.
    network_mode: Literal["isolated", "none", "host"] | None = None
    # Shut down after this long without a keep_alive (only when given: a local devbox lives until shut down).
    keep_alive_time_seconds: int | None = Field(default=None, ge=1, le=172800)
    after_idle: IdleConfig | None = None
    lifecycle: Lifecycle | None = None
    architecture: Literal["x86_64", "arm64"] | None = None
    provisioning_tier: Literal["standard", "flex"] | None = None
    available_ports: list[StrictInt] | None = None
    resource_size_request: StrictStr | None = None
    custom_cpu_cores: float | None = None
    custom_gb_memory: int | None = None
    custom_disk_size: int | None = None
    user_parameters: dict[str, Any] | None = None
    required_services: list[StrictStr] | None = None
    network_policy_id: StrictStr | None = None

    @field_validator("launch_commands")
    @classmethod
    def _commands(cls, value: list[str] | None) -> list[str] | None:
        for command in value or []:
            _no_nul("a launch command", command)
        return value


class CreateBody(_Params):
    published_schema: ClassVar[str] = "DevboxCreateParameters"  # checked first (see `validation`)

    name: str | None = None
    environment_variables: dict[str, str] | None = None
    secrets: dict[str, str] | None = None  # {ENV_NAME: secret name}
    launch_parameters: LaunchParameters | None = None
    metadata: dict[str, str] | None = None
    file_mounts: dict[str, str] | None = None
    mounts: list[dict[str, Any]] | None = None
    entrypoint: str | None = None
    code_mounts: list[Any] | None = None
    blueprint_id: str | None = None
    blueprint_name: str | None = None
    snapshot_id: str | None = None
    repo_connection_id: str | None = None
    tunnel: TunnelConfig | None = None
    gateways: dict[str, Any] | None = None
    mcp: dict[str, Any] | None = None

    @field_validator("environment_variables", "secrets")
    @classmethod
    def _env_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            if not ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name (letters, digits, _)")
            _no_nul(f"the value of {key}", text)
        return value

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, value: str | None) -> str | None:
        return _no_nul("the entrypoint", value) if value is not None else None


def unknown_fields(model: BaseModel, where: str = "") -> None:
    """Refuse the first field, at any depth, that the API does not define and that asks for
    something (null or empty asks for nothing: a client may send placeholders for fields it knows)."""
    for key, value in (model.model_extra or {}).items():
        if value is None or value in ({}, [], "", False):
            continue
        known = ", ".join(type(model).model_fields)
        raise ApiError(
            400,
            f"unknown field {where}{key}: the API has no such field here (fields: {known}); remove it "
            "or check its spelling",
        )
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            unknown_fields(value, f"{where}{name}.")


_BLUEPRINTS = (
    "is not supported by the embedded backend (no blueprints or snapshots); create a devbox without it "
    "and use launch_parameters.launch_commands to set it up"
)
# Create-body fields the embedded backend refuses whenever they ask for something.
_REFUSED_FIELDS: dict[str, str] = {
    "blueprint_id": _BLUEPRINTS,
    "blueprint_name": _BLUEPRINTS,
    "snapshot_id": _BLUEPRINTS,
    "code_mounts": (
        "are not supported by the embedded backend; clone the repository with a launch command instead "
        "(launch_parameters.launch_commands: ['git clone <url>'])"
    ),
    "repo_connection_id": (
        "is not supported by the embedded backend (no repository connections); clone the repository "
        "with a launch command instead (launch_parameters.launch_commands: ['git clone <url>'])"
    ),
    "gateways": (
        "are not supported by the embedded backend (no agent gateway); pass the credential as a secret "
        "(secrets: {ENV_NAME: secret_name})"
    ),
    "mcp": "is not supported by the embedded backend (no MCP hub); leave it out",
}
_REFUSED_LAUNCH_PARAMETERS: dict[str, str] = {
    "required_services": "needs a blueprint's containerized services, which the embedded backend has not; leave it out",
}


def host_architecture() -> str:
    machine = platform.machine().lower()
    return {"aarch64": "arm64", "amd64": "x86_64"}.get(machine, machine)


def refusals(body: CreateBody) -> None:
    """400 for the first field that asks for what the embedded backend cannot do."""
    unknown_fields(body)
    for key, why in _REFUSED_FIELDS.items():
        if getattr(body, key):
            raise ApiError(400, f"{key} {why}")
    for index, mount in enumerate(body.mounts or []):
        if mount.get("type") != "file_mount":
            raise ApiError(
                400,
                f"mounts[{index}]: mounts of type {mount.get('type')!r} are not supported by the embedded backend; "
                "only file_mount is (or use file_mounts: {path: contents})",
            )
    params = body.launch_parameters
    if params is None:
        return
    where = "launch_parameters."
    for key, why in _REFUSED_LAUNCH_PARAMETERS.items():
        if getattr(params, key):
            raise ApiError(400, f"{where}{key}: {why}")
    if params.architecture and params.architecture != host_architecture():
        raise ApiError(
            400,
            f"{where}architecture {params.architecture!r}: this backend's devboxes run on its host, which is "
            f"{host_architecture()}; leave architecture out or use {host_architecture()!r}",
        )
    if params.provisioning_tier == "flex":
        raise ApiError(
            400, f"{where}provisioning_tier 'flex' is not offered by the embedded backend; leave it out or use 'standard'"
        )
    lifecycle = params.lifecycle
    if lifecycle is not None:
        if params.after_idle and lifecycle.after_idle and params.after_idle != lifecycle.after_idle:
            raise ApiError(
                400,
                f"{where}after_idle and {where}lifecycle.after_idle differ; the API requires them to be equal: "
                "set only lifecycle.after_idle",
            )
        triggers = lifecycle.resume_triggers
        if triggers is not None and triggers.axon_event:
            raise ApiError(
                400,
                f"{where}lifecycle.resume_triggers.axon_event: the embedded backend does not resume devboxes "
                "on axon events; resume them with the resume call, and leave the trigger out",
            )
        hooks = lifecycle.lifecycle_hooks
        if hooks is not None and (hooks.suspend_commands or hooks.suspend_deadline_ms):
            raise ApiError(
                400,
                f"{where}lifecycle.lifecycle_hooks: suspend hooks are not supported by the embedded backend; "
                "run the commands yourself before suspending, and leave lifecycle_hooks out",
            )


_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_USER_FIELD = "launch_parameters.user_parameters"


def launch_user(params: LaunchParameters | None) -> SandboxUser:
    """The account commands run as: `user` unless user_parameters names another (root included)."""
    value = params.user_parameters if params is not None else None
    if not value:  # null or {} asks for nothing
        return DEFAULT_USER
    if set(value) != {"username", "uid"}:
        raise ApiError(400, f"{_USER_FIELD} must be an object with exactly `username` and `uid`")
    name, uid = value["username"], value["uid"]
    if not isinstance(name, str) or not _USERNAME.match(name):
        raise ApiError(400, f"{_USER_FIELD}.username must be a Linux user name (a-z, 0-9, _ and -, at most 32); got {name!r}")
    if not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid <= 65533:
        raise ApiError(400, f"{_USER_FIELD}.uid must be an integer from 0 to 65533; got {uid!r}")
    for known in (ROOT_USER, DEFAULT_USER):
        if (name == known.name) != (uid == known.uid):
            raise ApiError(
                400,
                f"{_USER_FIELD}: uid {known.uid} is `{known.name}` in a devbox; use username {known.name!r} "
                f"with uid {known.uid}, or another name and uid",
            )
    if name == ROOT_USER.name:
        return ROOT_USER
    if name == DEFAULT_USER.name:
        return DEFAULT_USER
    return SandboxUser(name, uid, f"/home/{name}")


def file_mounts_of(body: CreateBody) -> dict[str, str]:
    """`file_mounts` and the `file_mount` entries of `mounts`, as one {path: contents} map."""
    out = dict(body.file_mounts or {})
    for index, mount in enumerate(body.mounts or []):
        target, content = mount.get("target"), mount.get("content")
        extra = set(mount) - {"type", "target", "content"}
        if not isinstance(target, str) or not isinstance(content, str) or extra:
            raise ApiError(
                400,
                f"mounts[{index}]: a file_mount has exactly a string target (the path) and a string content"
                + (f"; remove {', '.join(sorted(extra))}" if extra else ""),
            )
        if target in out:
            raise ApiError(400, f"mounts[{index}]: {target!r} is mounted twice; give each file once")
        out[target] = content
    return out
