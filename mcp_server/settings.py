"""Tunables of the MCP layer, in one place, with environment overrides for `devbox-mcp serve`."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Literal

LinkMode = Literal["auto", "always", "never"]
LINK_MODES: tuple[LinkMode, ...] = ("auto", "always", "never")


@dataclass(frozen=True)
class Settings:
    # How long `execute`/`stream_logs` hold a call by default. Unset (None): 50 s, less for clients
    # known to time out sooner (budgets.py); set, it applies to every client.
    wait_seconds: float | None = None
    # Upper bound a caller may ask for with `wait_seconds` (clients with longer ceilings can use it).
    max_wait_seconds: float = 600.0
    # Text budget of one result (command output, file text), in UTF-8 bytes.
    output_budget: int = 16 * 1024
    # Progress notifications: at most one per interval, each message at most this many bytes.
    progress_interval: float = 0.1
    progress_message_bytes: int = 1024
    # Binary files returned on request are capped at this size (non-image bytes, sent as base64, also at
    # 3/4 of output_budget).
    binary_cap: int = 512 * 1024
    # Rows returned by sql_query before the result is cut (with a note).
    sql_max_rows: int = 200
    # How long `execute`'s first API request waits for the command to complete (tools/execute.py
    # `start_execution`): a command done by then costs that one request. Unset (None): on the
    # embedded backend as long as the call's wait (≤ 25 s), the answer coming early once the
    # command prints (`output_grace`); against Runloop's API 0.1 s. 0: always stream.
    fast_window: float | None = None
    # Embedded backend: how long after a command's first output its answer waits for it to
    # complete (its first line shows at once, from the same request; output after it shows
    # once this ends). Long enough for a quick command to exit after printing on a busy machine
    # (usually < 1 ms, up to ~15 ms measured at load 2-3 on 2 cores), so it costs one request.
    output_grace: float = 0.01
    # Time allowed to kill a cancelled command in the devbox.
    kill_timeout: float = 5.0
    # How long create_devbox / resume_devbox wait for the devbox to be running.
    boot_timeout: float = 300.0
    # resource_link blocks to the full output of a cut result: auto (only for a client that has
    # read a resource in its session), always, or never. See resources/links.py.
    resource_links: LinkMode = "auto"
    # terminal_send without wait_for returns once the terminal's output has been quiet this long.
    terminal_quiet_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.resource_links not in LINK_MODES:
            raise ValueError(
                f"DEVBOX_MCP_RESOURCE_LINKS={self.resource_links!r} is not one of {', '.join(LINK_MODES)}"
            )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """`DEVBOX_MCP_<FIELD>` (e.g. DEVBOX_MCP_WAIT_SECONDS=30) overrides a default."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"DEVBOX_MCP_{f.name.upper()}")
            if raw is None:
                continue
            if isinstance(f.default, str):
                values[f.name] = raw.strip().lower()
                continue
            kind = int if f.type == "int" else float
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"DEVBOX_MCP_{f.name.upper()}={raw!r} is not a number") from None
        return cls(**values)
