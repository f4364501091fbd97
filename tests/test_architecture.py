"""The architecture of mcp_server, as rules on imports, checked on every module (ast, no import).

    net          net.py: what both HTTP servers share (listening socket, uvicorn, URL)
    runloop/     the Runloop API client (HTTP, retries, errors, resumable streams)
    local/       the embedded backend: a Runloop-compatible API on this machine
    core         the MCP building blocks at the package root: settings, shaping, progress,
                 subscriptions, logging_and_completion
    terminal/    terminal sessions over the client: PTY WebSocket, virtual screen, waiting
    resources/   MCP resources over the client
    tools/       MCP tools over the client
    server       server.py: the MCP server, built from the tools and resources
    transport/   streamable HTTP for any MCPServer
    commands/    devbox-mcp and its subcommands: the only code that knows both sides

`MAY_IMPORT` says which other parts each part may import (any part may import itself, the
standard library and third-party packages, except those in `MAY_NOT_IMPORT`). So: `local/`
knows neither the MCP layer nor the client, and the client knows neither MCP nor `local/`;
tools and resources reach the API through the client only; the transport serves any MCP
server; only the commands import both sides. Inside `local/`, the domain (devboxes, executions,
axons, files) never imports the HTTP routes (`*_api` or `routes` modules): they are wired where
the app is built (`WIRING`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mcp_server"

MAY_IMPORT: dict[str, set[str]] = {
    "net": set(),
    "runloop": set(),
    "local": {"net"},
    "core": set(),
    "terminal": {"core", "runloop"},
    "resources": {"core", "runloop", "terminal"},
    "tools": {"core", "resources", "runloop", "terminal"},
    "server": {"core", "resources", "tools", "runloop", "terminal"},
    "transport": {"net"},
    "commands": {"core", "resources", "tools", "server", "runloop", "terminal", "transport", "local", "net"},
}
MAY_NOT_IMPORT: dict[str, set[str]] = {
    "net": {"mcp"},
    "local": {"mcp"},  # the MCP SDK
    "runloop": {"mcp", "starlette", "uvicorn"},
}
FOLDERS = {"net", "runloop", "local", "terminal", "resources", "tools", "transport", "commands"}
# The modules of local/ that may import routes: the app, what serves it, and the routes themselves.
WIRING = {"mcp_server.local", "mcp_server.local.app", "mcp_server.local.server", "mcp_server.local.service"}


def is_routes(module: str) -> bool:
    return module.startswith("mcp_server.local.") and module.rsplit(".", 1)[-1].endswith(("_api", "routes"))


def part_of(module: str) -> str:
    """`mcp_server.tools.execute` -> `tools`; root modules are `core`, except server.py and __main__ (a command)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] in FOLDERS:
        return parts[1]
    return {"server": "server", "__main__": "commands"}.get(parts[1], "core")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, source: str, is_package: bool = False) -> list[tuple[int, list[str]]]:
    """Each import statement of `source`, at any depth (also under TYPE_CHECKING): its line and the
    absolute modules it imports."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import tools`: the names may be modules, of another part than the package.
            names = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
            found.append((node.lineno, [target, *names]))
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Each import of `source` (the text of `module`) that breaks a rule, as `module:line: what`."""
    part = part_of(module)
    allowed = MAY_IMPORT[part] | {part}
    out = []
    domain = part == "local" and module not in WIRING and not is_routes(module)
    for line, targets in imports_of(module, source, is_package):
        for target in targets:
            top = target.split(".")[0]
            if top == "mcp_server" and part_of(target) not in allowed:
                out.append(f"{module}:{line}: {part} may not import {target} ({part_of(target)})")
                break
            if domain and is_routes(target):
                out.append(f"{module}:{line}: the domain may not import its routes ({target}); wire them where the app is built")
                break
            if top in MAY_NOT_IMPORT.get(part, ()):
                out.append(f"{module}:{line}: {part} may not import {target}")
                break
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_part_with_rules() -> None:
    assert len(MODULES) > 40
    assert {part_of(module_name(p)) for p in MODULES} == set(MAY_IMPORT)


def test_no_module_breaks_a_boundary() -> None:
    found = [v for p in MODULES for v in violations(module_name(p), p.read_text(), p.name == "__init__.py")]
    assert found == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("mcp_server.local.app", "from ..tools import common"),
        ("mcp_server.local.app", "from mcp_server.runloop import RunloopClient"),
        ("mcp_server.local.app", "import mcp.types"),
        ("mcp_server.runloop.client", "from ..local.config import LocalConfig"),
        ("mcp_server.tools.execute", "def f():\n    from ..local import server"),
        ("mcp_server.resources.reading", "from ..tools.common import state"),
        ("mcp_server.transport.http_app", "from ..server import build_server"),
        ("mcp_server.shaping", "from . import tools"),
        ("mcp_server.local.executions", "def routes():\n    from .execution_api import routes"),
    ],
)
def test_a_forbidden_import_is_found(module: str, source: str) -> None:
    assert len(violations(module, source)) == 1


def logger_names(source: str) -> list[tuple[int, str | None]]:
    """(line, name) of each `logging.getLogger(...)` call; None when the name is not a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger":
            arg = node.args[0] if node.args else None
            found.append((node.lineno, arg.value if isinstance(arg, ast.Constant) else None))
    return found


def test_our_loggers_are_named_devbox_mcp_and_their_part() -> None:
    """One prefix: `devbox_mcp.<folder or root module>` (`devbox_mcp.local`, `devbox_mcp.subscriptions`);
    other names only to quiet a library (`httpx`, `mcp`)."""
    wrong = []
    for path in MODULES:
        module = module_name(path)
        expected = "devbox_mcp." + (module.split(".") + ["?"])[1]
        for line, name in logger_names(path.read_text()):
            if name is None or (name.startswith("devbox_mcp") and name != expected):
                wrong.append(f"{module}:{line}: logger {name!r}, not {expected!r}")
    assert wrong == []
