"""Shared fixtures: a real embedded backend on a loopback port, per test session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client
from support.mcp_client import MODES, make_server

from mcp_server.local import service
from mcp_server.local.server import RunningBackend, start_in_thread

# Fixtures of the shared helpers (tests/support/), registered once for every test. tests/ is on
# sys.path (pytest puts a rootless conftest's folder there), so `support` imports as a package.
pytest_plugins = ["support.faultproxy"]


@pytest.fixture(scope="session", autouse=True)
def devbox_image() -> None:
    """The machine's devbox image, built before any devbox starts (`make install` has usually built it)."""
    from support.devbox_system import machine_system

    machine_system()


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBackend]:
    """The embedded backend, served over loopback HTTP on its own thread."""
    running = start_in_thread(tmp_path_factory.mktemp("backend"))
    yield running
    running.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory for `devbox-mcp` processes on the embedded backend. The shared backend
    they start there (a detached process) is stopped at the end of the test."""
    path = tmp_path / "data"
    yield path
    service.stop(path)


@pytest.fixture(scope="session", autouse=True)
def no_backend_outlives_the_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The net under `data_dir`: a shared backend started anywhere in the suite's temporary
    directories is stopped when the suite ends, so CI leaves no process behind."""
    yield
    base = tmp_path_factory.getbasetemp()
    for depth in range(1, 7):  # <test dir>/home/.local/share/devbox-mcp is the deepest in use
        for lock in base.glob("/".join(["*"] * depth + [service.LOCK_FILE])):
            service.stop(lock.parent)


@pytest.fixture(scope="session")
def sdk(backend: RunningBackend):
    """The official Runloop SDK pointed at the embedded backend."""
    from runloop_api_client import Runloop

    client = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=2)
    yield client
    client.close()


@pytest.fixture(scope="session")
def http(backend: RunningBackend) -> Iterator[httpx.Client]:
    """A plain HTTP client with the backend's key, for what the SDK cannot send (bad input, raw headers)."""
    with httpx.Client(
        base_url=backend.base_url, headers={"Authorization": f"Bearer {backend.api_key}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture(params=MODES)
async def mcp(request: pytest.FixtureRequest, backend: RunningBackend) -> AsyncIterator[Client]:
    """A real MCP client, in memory, on a server built over the backend: once per protocol era."""
    async with Client(make_server(backend), mode=request.param) as client:
        yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


os.environ.setdefault("DEVBOX_MCP_TEST", "1")
