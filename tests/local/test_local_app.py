"""The backend's shell: auth, health, and error shapes."""

import httpx

from mcp_server.local.server import RunningBackend


def test_health_needs_no_key(backend: RunningBackend) -> None:
    r = httpx.get(f"{backend.base_url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_missing_or_wrong_key_is_401(backend: RunningBackend) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": backend.api_key},
        {"Authorization": f"Basic {backend.api_key}"},
        {"Authorization": f"Bearer {backend.api_key}x"},
    ):
        r = httpx.get(f"{backend.base_url}/v1/devboxes", headers=headers)
        assert r.status_code == 401
        assert "API key" in r.json()["message"]
        assert backend.api_key not in r.text


def test_the_bearer_scheme_is_case_insensitive(backend: RunningBackend) -> None:
    # RFC 7235: the auth scheme is a case-insensitive token; clients and proxies send `bearer`.
    for scheme in ("bearer", "BEARER", "Bearer", "bEaReR"):
        r = httpx.get(f"{backend.base_url}/v1/devboxes", headers={"Authorization": f"{scheme} {backend.api_key}"})
        assert r.status_code == 200, (scheme, r.text)


def test_unknown_route_is_404_json(backend: RunningBackend) -> None:
    r = httpx.get(f"{backend.base_url}/v1/nothing", headers={"Authorization": f"Bearer {backend.api_key}"})
    assert r.status_code == 404


def test_the_api_key_stays_out_of_reprs(backend: RunningBackend) -> None:
    # Reprs end up in logs and tracebacks (pytest prints them on failure); the key must not.
    assert backend.api_key not in repr(backend)
    assert backend.api_key not in repr(backend.config)
