"""Settings of one embedded backend instance, the durations the environment may change, and the
shape each API area plugs in with."""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from starlette.routing import BaseRoute


@dataclass(frozen=True)
class LocalConfig:
    data_dir: Path
    api_key: str = field(repr=False)  # a secret: never in a repr, a log line or a traceback
    # Run devboxes without bubblewrap (no isolation). Only by explicit choice; stated in every devbox view.
    unsafe_no_sandbox: bool = False
    # Where the tunnel proxy listens (tunnel_proxy.py); port 0: any free port, chosen at start.
    tunnel_host: str = "127.0.0.1"
    tunnel_port: int = 0


# Durations (seconds, 0 or more) the environment may change, with their defaults. A value that
# is not such a number is refused with a message naming it, as DEVBOX_MCP_* settings are.
ENV_SECONDS: dict[str, float] = {
    # A subscription that saw no event for this long ends (the client re-subscribes); 0: never.
    "DEVBOX_AXON_SSE_IDLE_SECONDS": 900.0,
    # An axon nobody used for this long has its writer thread and connections closed.
    "DEVBOX_AXON_IDLE_CLOSE_SECONDS": 600.0,
    # A PTY session with no client attached for this long ends (its shell gets SIGHUP); 0: at once.
    "DEVBOX_PTY_IDLE_TTL_SECONDS": 300.0,
}


def env_seconds(name: str, environ: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return ENV_SECONDS[name]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}={raw!r} is not a number of seconds (0 or more)")
    return value


def check_env(environ: Mapping[str, str] | None = None) -> None:
    """Raise ValueError for the first duration in the environment that is not one, before anything starts."""
    for name in ENV_SECONDS:
        env_seconds(name, environ)


@dataclass
class Component:
    """One API area (devboxes, axons): its routes, what to do at start-up and shutdown, and what its
    routes (module-level functions) reach as `request.app.state.<name>`: its managers and caches."""

    routes: list[BaseRoute]
    startup: Callable[[], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None
    extra: dict[str, object] = field(default_factory=dict)
