"""Reaching a devbox's tunnel from a test the way a client on this machine does.

Python's resolver does not send `*.localhost` to loopback as browsers do, so a client here
connects to 127.0.0.1 and sends the tunnel's host name in `Host`: the same request a browser
makes. `start_app` runs `webapp.py` in a devbox and returns once it listens.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from .webapp import SOURCE


def tunnel_url(tunnel: Any, port: int) -> str:
    """The URL a person opens: the view's url_template with the port filled in."""
    template = tunnel["url_template"] if isinstance(tunnel, dict) else tunnel.url_template
    return template.format(port=port)


def proxy_address(url: str) -> tuple[str, str]:
    """(`http://127.0.0.1:<proxy port>`, the Host header) for a tunnel URL."""
    parts = urlsplit(url)
    return f"http://127.0.0.1:{parts.port}", parts.netloc


def tunnel_client(tunnel: Any, port: int, **kwargs: Any) -> httpx.Client:
    base, host = proxy_address(tunnel_url(tunnel, port))
    headers = {"Host": host, **kwargs.pop("headers", {})}
    return httpx.Client(base_url=base, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)


def start_app(sdk: Any, devbox_id: str, port: int = 8000) -> None:
    """Upload webapp.py, start it in the background, and return once it listens (bounded: 10 s)."""
    sdk.devboxes.write_file_contents(devbox_id, file_path="webapp.py", contents=SOURCE)
    result = sdk.devboxes.execute_and_await_completion(
        devbox_id,
        command=(
            f"nohup python3 webapp.py {port} > app-{port}.log 2>&1 & "
            f"for i in $(seq 200); do grep -q serving app-{port}.log && exit 0; sleep 0.05; done; "
            f"cat app-{port}.log; exit 1"
        ),
    )
    assert result.exit_status == 0, result.stdout


def wait_listening(sdk: Any, devbox_id: str, port: int = 8000) -> None:
    """Return once something listens on `port` in the devbox (bounded: 10 s), e.g. its entrypoint."""
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
    result = sdk.devboxes.execute_and_await_completion(
        devbox_id,
        command=f'for i in $(seq 200); do python3 -c "{probe}" 2>/dev/null && exit 0; sleep 0.05; done; exit 1',
    )
    assert result.exit_status == 0, f"nothing listens on port {port} in {devbox_id}"
