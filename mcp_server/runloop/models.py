"""Pydantic views of the Runloop API responses the MCP tools use.

Unknown fields are kept (`extra="allow"`): the cloud API adds fields over time, and a new field
must never break a call. Only the fields the tools read are declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class View(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)


# A string the API may send as null.
Text = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]


# --- devboxes -------------------------------------------------------------------------------

# The published API's DevboxViewStatus: the only values `wait_for_status` and the list filter take.
# (Views may also say "queued" or "scheduled", which newer SDKs know, before these.)
DevboxStatus = Literal[
    "provisioning", "initializing", "running", "suspending", "suspended", "resuming", "failure", "shutdown"
]
DEVBOX_STATUSES: tuple[str, ...] = get_args(DevboxStatus)
# A devbox in one of these will not become running by waiting.
DEVBOX_TERMINAL_STATUSES = frozenset({"failure", "shutdown"})


class StateTransition(View):
    status: str
    transition_time_ms: int | None = None
    failure_reason: str | None = None


# Where Runloop's cloud serves a tunnel; the embedded backend says where it does (`url_template`).
CLOUD_TUNNEL_URL = "https://{port}-{tunnel_key}.tunnel.runloop.ai"


class TunnelView(View):
    """`TunnelView`: one per devbox, serving every port of it."""

    tunnel_key: str
    auth_mode: str = "open"
    auth_token: str | None = Field(default=None, repr=False)  # a secret: never in a repr
    http_keep_alive: bool | None = None
    wake_on_http: bool | None = None
    url_template: str | None = None  # the embedded backend's: `{port}` left to fill

    def url(self, port: int | str) -> str:
        """The URL a person opens to reach `port` of the devbox."""
        if self.url_template:
            return self.url_template.format(port=port)
        return CLOUD_TUNNEL_URL.format(port=port, tunnel_key=self.tunnel_key)


class DevboxView(View):
    id: str
    status: str
    create_time_ms: int | None = None
    name: str | None = None
    end_time_ms: int | None = None
    capabilities: list[str] = Field(default_factory=list)
    launch_parameters: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    state_transitions: list[StateTransition] = Field(default_factory=list)
    failure_reason: str | None = None
    shutdown_reason: str | None = None
    blueprint_id: str | None = None
    snapshot_id: str | None = None
    tunnel: TunnelView | None = None


class DevboxUsage(View):
    """`DevboxResourceUsageView`: active (running) and elapsed seconds, and the size over them."""

    id: str
    status: str | None = None
    total_active_seconds: int = 0
    total_elapsed_seconds: int = 0
    vcpu_seconds: int = 0
    memory_gb_seconds: int = 0
    disk_gb_seconds: int = 0


class SnapshotView(View):
    """`DevboxDiskSnapshotView`."""

    id: str
    name: str | None = None
    create_time_ms: int | None = None
    source_devbox_id: str | None = None
    commit_message: str | None = None
    size_bytes: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SnapshotStatus(View):
    """`DevboxSnapshotAsyncStatusView`: in_progress, complete (with the snapshot), error, deleted."""

    status: str
    snapshot: SnapshotView | None = None
    error_message: str | None = None


class SnapshotListPage(View):
    snapshots: list[SnapshotView] = Field(default_factory=list)
    has_more: bool = False


class DevboxListPage(View):
    devboxes: list[DevboxView] = Field(default_factory=list)
    has_more: bool = False
    total_count: int | None = None


class EgressRules(View):
    allow_all: bool = False
    allowed_hostnames: list[str] = Field(default_factory=list)


class NetworkPolicyView(View):
    id: str
    name: str
    egress: EgressRules = Field(default_factory=EgressRules)


class NetworkPolicyListPage(View):
    network_policies: list[NetworkPolicyView] = Field(default_factory=list)
    has_more: bool = False


class LogEntry(View):
    level: str | None = None
    source: str | None = None
    timestamp_ms: int | None = None
    message: str | None = None
    cmd: str | None = None
    cmd_id: str | None = None
    exit_code: int | None = None


# --- executions ------------------------------------------------------------------------------


class ExecutionView(View):
    """`DevboxAsyncExecutionDetailView`: stdout/stderr/exit_status are unset until completion,
    and then hold at most `last_n` lines (the `*_truncated` flags say so)."""

    devbox_id: str
    execution_id: str
    status: str
    exit_status: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    stdout_truncated: bool | None = None
    stderr_truncated: bool | None = None
    killed_for: str | None = None  # embedded backend: "out_of_memory" when the kernel OOM-killed it

    @property
    def completed(self) -> bool:
        return self.status == "completed"


class ExecutionDetail(View):
    """`DevboxExecutionDetailView`: the result of `execute_sync` and `write_file_contents`."""

    devbox_id: str | None = None
    exit_status: int | None = None
    stdout: Text = ""
    stderr: Text = ""


class StdinResult(View):
    devbox_id: str | None = None
    execution_id: str | None = None
    success: bool = False


@dataclass(frozen=True)
class OutputChunk:
    """Output of one stream event. `offset` is the byte offset *after* this chunk, counted by the
    client from the UTF-8 bytes received (the server's own chunk offset is ambiguous): pass it
    back as `offset=` to continue exactly here."""

    stream: Literal["stdout", "stderr"]
    text: str
    offset: int


@dataclass(frozen=True)
class FileDownload:
    """At most `max_bytes` of a file. `truncated` says the file was longer; `size` is the full
    size when the server announced it (Content-Length) or the download completed, else None."""

    path: str
    data: bytes
    truncated: bool
    size: int | None


# --- axons -----------------------------------------------------------------------------------

PUBLISHABLE_ORIGINS = ("EXTERNAL_EVENT", "AGENT_EVENT", "USER_EVENT")


class AxonView(View):
    id: str
    created_at_ms: int | None = None
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    deleted_at_ms: int | None = None


class AxonListPage(View):
    axons: list[AxonView] = Field(default_factory=list)
    has_more: bool = False
    total_count: int | None = None


class AxonEventView(View):
    """One axon event. `payload` is the JSON-encoded string the API stores; `payload_json()` decodes it."""

    axon_id: str
    sequence: int
    timestamp_ms: int | None = None
    origin: str | int | None = None
    source: str | None = None
    event_type: str | None = None
    payload: str | None = None

    def payload_json(self) -> Any:
        """The decoded payload, or the raw string if it is not valid JSON."""
        import json

        if self.payload is None:
            return None
        try:
            return json.loads(self.payload)
        except ValueError:
            return self.payload


class AxonEventListPage(View):
    """Events ordered by sequence descending, as the API returns them."""

    events: list[AxonEventView] = Field(default_factory=list)
    has_more: bool = False
    total_count: int | None = None


class PublishResult(View):
    sequence: int
    timestamp_ms: int | None = None


class SqlColumn(View):
    name: str
    type: str | None = None


class SqlMeta(View):
    changes: int | None = None
    duration_ms: float | None = None
    rows_read_limit_reached: bool | None = None


class SqlResult(View):
    columns: list[SqlColumn] = Field(default_factory=list)
    rows: list[list[Any]] = Field(default_factory=list)
    meta: SqlMeta = Field(default_factory=SqlMeta)

    def records(self) -> list[dict[str, Any]]:
        """Rows as objects keyed by column name (the API sends positional arrays)."""
        names = [c.name for c in self.columns]
        return [dict(zip(names, row, strict=False)) for row in self.rows]


class SqlStatement(BaseModel):
    sql: str
    params: list[Any] | None = None


class SqlError(View):
    message: str = ""


class SqlBatchItem(View):
    """One statement's outcome: exactly one of `success` and `error` is set."""

    success: SqlResult | None = None
    error: SqlError | None = None


class SqlBatchResult(View):
    results: list[SqlBatchItem] = Field(default_factory=list)


# --- blueprints ------------------------------------------------------------------------------

BLUEPRINT_FINAL_STATUSES = frozenset({"build_complete", "failed"})


class BlueprintView(View):
    id: str
    name: str | None = None
    status: str
    create_time_ms: int | None = None
    build_finish_time_ms: int | None = None
    failure_reason: str | None = None
    base_blueprint_id: str | None = None


class BlueprintListPage(View):
    blueprints: list[BlueprintView] = Field(default_factory=list)
    has_more: bool = False


class BlueprintLogLine(View):
    level: str | None = None
    timestamp_ms: int | None = None
    message: Text = ""


class BlueprintLogs(View):
    blueprint_id: str | None = None
    logs: list[BlueprintLogLine] = Field(default_factory=list)


# --- PTY sessions -----------------------------------------------------------------------------


class PtyTunnelView(View):
    """`POST /v1/devboxes/{id}/create_pty_tunnel`: where a devbox's PTY paths are served, and the token."""

    tunnel_key: str
    auth_token: str = Field(repr=False)


class PtyConnectView(View):
    """`GET /pty/{session_name}`: the session's WebSocket path and size."""

    created: bool
    attached: bool
    session_name: str | None = None
    status: str | None = None
    connect_url: str | None = None
    cols: int | None = None
    rows: int | None = None
    idle_ttl_seconds: int | None = None


class PtyControlResultView(View):
    session_name: str | None = None
    status: str | None = None
