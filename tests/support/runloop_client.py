"""Helpers shared by the Runloop client tests: a fast retry policy and a client that uses it."""

from __future__ import annotations

from mcp_server.runloop import RetryPolicy, RunloopClient

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, max_retry_after=2.0)


def client_for(url: str, key: str, policy: RetryPolicy = FAST, **kwargs) -> RunloopClient:  # noqa: ANN003
    return RunloopClient(url, key, retry=policy, **kwargs)
