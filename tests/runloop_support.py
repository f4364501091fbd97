"""Helpers shared by the Runloop client tests: a fast retry policy and endpoint detection.

API areas are built on other branches; a test that needs an endpoint the backend does not
serve yet is skipped with the missing route named (and runs as soon as it is merged).
"""

from __future__ import annotations

import re

import pytest

from mcp_server.runloop import RetryPolicy, RunloopClient

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, max_retry_after=2.0)


def _normal(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def served_routes(backend) -> set[tuple[str, str]]:  # noqa: ANN001 - RunningBackend
    app = backend._server.config.app
    routes: set[tuple[str, str]] = set()
    for route in app.routes:
        for method in getattr(route, "methods", None) or {"GET"}:
            routes.add((method, _normal(route.path)))
    return routes


def require(backend, *endpoints: str) -> None:  # noqa: ANN001
    """Skip unless every `"METHOD /path/{x}"` endpoint is served by the backend."""
    served = served_routes(backend)
    missing = [e for e in endpoints if (e.split(" ", 1)[0], _normal(e.split(" ", 1)[1])) not in served]
    if missing:
        pytest.skip(f"backend does not serve {', '.join(missing)} yet (merge its branch)")


def client_for(url: str, key: str, policy: RetryPolicy = FAST, **kwargs) -> RunloopClient:  # noqa: ANN003
    return RunloopClient(url, key, retry=policy, **kwargs)
