"""A devbox's tunnel: its settings (TunnelConfig in, TunnelView out) and how it is kept.

One tunnel per devbox, as on Runloop. It is kept in the devbox's record (devbox.json, so it
survives restarts) as {tunnel_key, auth_mode, auth_token, create_time_ms, http_keep_alive,
wake_on_http}; the tunnel proxy (`tunnel_proxy.py`) finds the devbox by its key. The key is
random and lower-case so that `{port}-{tunnel_key}` is a valid host-name label.

Beyond the API's TunnelView, the embedded backend adds `url_template`: where its proxy serves
the tunnel, with `{port}` left for the client to fill (Runloop's is
`https://{port}-{tunnel_key}.tunnel.runloop.ai`, which clients build themselves).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, StrictBool

from .clock import now_ms

KEY_ALPHABET = string.ascii_lowercase + string.digits
KEY_LENGTH = 20
# The path form, for clients that cannot use a `{port}-{key}.localhost` host name.
PATH_PREFIX = "/tunnel/"


class TunnelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    published_schema: ClassVar[str] = "TunnelConfig"

    auth_mode: Literal["open", "authenticated"] | None = None
    http_keep_alive: StrictBool | None = None
    wake_on_http: StrictBool | None = None


def new_tunnel(config: TunnelConfig) -> dict[str, Any]:
    """The record of a new tunnel, with the API's defaults (open, keep-alive on, no wake)."""
    auth_mode = config.auth_mode or "open"
    return {
        "tunnel_key": "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH)),
        "auth_mode": auth_mode,
        "auth_token": secrets.token_urlsafe(32) if auth_mode == "authenticated" else None,
        "create_time_ms": now_ms(),
        "http_keep_alive": True if config.http_keep_alive is None else config.http_keep_alive,
        "wake_on_http": bool(config.wake_on_http),
    }


def tunnel_view(record: Mapping[str, Any], origin: str | None) -> dict[str, Any]:
    """TunnelView (auth_token only when authenticated), plus `url_template` once the proxy serves.

    `origin` is the proxy's `http://localhost:<port>`.
    """
    view = {key: record[key] for key in ("tunnel_key", "auth_mode", "create_time_ms", "http_keep_alive", "wake_on_http")}
    if record.get("auth_token"):
        view["auth_token"] = record["auth_token"]
    if origin is not None:
        scheme, _, host = origin.partition("://")
        view["url_template"] = f"{scheme}://{{port}}-{record['tunnel_key']}.{host}"
    return view


def wakes_on_http(record: Mapping[str, Any], launch_parameters: Mapping[str, Any]) -> bool:
    """Whether HTTP through the tunnel resumes the suspended devbox: `lifecycle.resume_triggers.http`
    when set (the API gives it precedence), else the tunnel's `wake_on_http`."""
    triggers = (launch_parameters.get("lifecycle") or {}).get("resume_triggers") or {}
    if triggers.get("http") is not None:
        return bool(triggers["http"])
    return bool(record.get("wake_on_http"))


def split_label(label: str) -> tuple[int, str] | None:
    """`{port}-{tunnel_key}` → (port, key); None when it is not one."""
    port_text, dash, key = label.partition("-")
    if not dash or not port_text.isdigit() or not key or len(port_text) > 5:
        return None
    port = int(port_text)
    if not 1 <= port <= 65535:
        return None
    return port, key

