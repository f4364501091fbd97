"""Where the client connects and how it authenticates, from arguments or the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import InvalidArgument

DEFAULT_BASE_URL = "https://api.runloop.ai"


@dataclass(frozen=True)
class ClientConfig:
    base_url: str = DEFAULT_BASE_URL
    # repr=False: a config printed in a log or traceback must not show the key.
    api_key: str = field(default="", repr=False)
    custom_headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def check(self) -> None:
        """Raise `InvalidArgument` if the key or base URL could not make a request. `serve` calls
        it at start-up: a bad environment is then one clear line, not a traceback from the lifespan."""
        if self.api_key:  # without a key the embedded backend is used and the base URL ignored
            check_connection(self.base_url, self.api_key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientConfig:
        """`RUNLOOP_BASE_URL` (default the cloud), `RUNLOOP_API_KEY`, `RUNLOOP_CUSTOM_HEADERS`."""
        env = os.environ if environ is None else environ
        return cls(
            base_url=(env.get("RUNLOOP_BASE_URL") or DEFAULT_BASE_URL).rstrip("/"),
            api_key=env.get("RUNLOOP_API_KEY", ""),
            custom_headers=parse_custom_headers(env.get("RUNLOOP_CUSTOM_HEADERS", "")),
        )


def check_connection(base_url: str, api_key: str) -> None:
    """Refuse a key an HTTP header cannot carry and a base URL that is not http(s)."""
    if api_key and not (api_key.isascii() and api_key.isprintable() and not any(c.isspace() for c in api_key)):
        # Checked here because an HTTP library's complaint about a bad header quotes the value.
        raise InvalidArgument(
            "the API key contains spaces, line breaks or non-ASCII characters; "
            "check RUNLOOP_API_KEY (a stray newline from a file is common)"
        )
    if not base_url.startswith(("http://", "https://")):
        raise InvalidArgument(f"base URL must start with http:// or https://, got {base_url!r}")


def parse_custom_headers(text: str) -> dict[str, str]:
    """`Name: value` per line, as the official SDK reads `RUNLOOP_CUSTOM_HEADERS`; bad lines are ignored."""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            headers[name.strip()] = value.strip()
    return headers
