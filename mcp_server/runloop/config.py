"""Where the client connects and how it authenticates, from arguments or the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_BASE_URL = "https://api.runloop.ai"


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = DEFAULT_BASE_URL
    # repr=False: a config printed in a log or traceback must not show the key.
    api_key: str = field(default="", repr=False)
    custom_headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """`RUNLOOP_BASE_URL` (default the cloud), `RUNLOOP_API_KEY`, `RUNLOOP_CUSTOM_HEADERS`."""
        env = os.environ if environ is None else environ
        return cls(
            base_url=(env.get("RUNLOOP_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
            api_key=env.get("RUNLOOP_API_KEY", ""),
            custom_headers=parse_custom_headers(env.get("RUNLOOP_CUSTOM_HEADERS", "")),
        )


def parse_custom_headers(text: str) -> dict[str, str]:
    """`Name: value` per line, as the official SDK reads `RUNLOOP_CUSTOM_HEADERS`; bad lines are ignored."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers
