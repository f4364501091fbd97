"""Settings of one embedded backend instance, and the shape each API area plugs in with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.routing import BaseRoute


@dataclass(frozen=True)
class LocalConfig:
    data_dir: Path
    api_key: str = field(repr=False)  # a secret: never in a repr, a log line or a traceback
    # Run devboxes without bubblewrap (no isolation). Only by explicit choice; stated in every devbox view.
    unsafe_no_sandbox: bool = False


@dataclass
class Component:
    """One API area (devboxes, axons): its routes, and what to do at start-up and shutdown."""

    routes: list[BaseRoute]
    startup: Callable[[], Awaitable[None]] | None = None
    shutdown: Callable[[], Awaitable[None]] | None = None
    extra: dict[str, object] = field(default_factory=dict)
