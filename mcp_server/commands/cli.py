"""`devbox-mcp` command line: serve MCP (default), run the embedded backend alone, and helpers.

Only this module (and the wiring it calls) knows both the MCP layer and the embedded backend.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "devbox-mcp"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devbox-mcp", description="MCP server for Linux devboxes (Runloop API).")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="serve MCP (stdio by default)")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--data-dir", type=Path, default=None, help="embedded backend data (when no RUNLOOP_API_KEY)")
    http = serve.add_argument_group("HTTP transport")
    http.add_argument(
        "--stateless", action="store_true", help="no sessions: any replica can serve any request"
    )
    http.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without a bearer token (refused unless --host is loopback)",
    )
    http.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="accept this Host header too (repeatable; NAME:* for any port, * for any host)",
    )
    http.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="accept requests from this browser Origin (repeatable), e.g. https://app.example.com",
    )

    install = sub.add_parser("install", help="add devbox-mcp to an MCP client's configuration")
    install.add_argument("client", choices=["claude-desktop", "claude-code", "cursor", "vscode", "codex"])
    install.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    install.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="pass an environment variable to the server, e.g. RUNLOOP_API_KEY (a bare KEY copies its current value)",
    )
    install.add_argument(
        "--config-path", type=Path, default=None, help="write this file instead of the client's own"
    )
    install.add_argument(
        "--name", default="devbox", help="server name in the client's config (default: devbox)"
    )

    local = sub.add_parser(
        "local-api",
        help="serve the embedded Runloop-compatible API in the foreground (shared with devbox-mcp processes)",
    )
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=8787)
    local.add_argument("--data-dir", type=Path, default=None)
    local.add_argument(
        "--tunnel-host", default="127.0.0.1", help="where the tunnel proxy listens (default: loopback only)"
    )
    local.add_argument(
        "--tunnel-port", type=int, default=0, help="the tunnel proxy's port (default 0: any free port, printed)"
    )
    local.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run devboxes as plain host processes when bubblewrap is unavailable (no isolation)",
    )
    local.add_argument(
        "--idle-shutdown",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this long with no request and no running devbox (default 0: run until stopped)",
    )
    # Set by devbox-mcp when it starts the shared backend in the background: no key on stderr (a log file).
    local.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)
    control = local.add_mutually_exclusive_group()
    control.add_argument(
        "--status", action="store_true", help="say whether a backend serves the data dir, and where"
    )
    control.add_argument(
        "--stop", action="store_true", help="stop the backend serving the data dir (and its devboxes)"
    )

    schemas = sub.add_parser("schemas", help="print or write the tool JSON schemas")
    schemas.add_argument("--write", action="store_true", help="write tool_schemas/<tool>.json")
    schemas.add_argument("--dir", type=Path, default=Path("tool_schemas"))

    sub.add_parser("demo", help="run the end-to-end demo against the embedded backend")

    secrets = sub.add_parser("secrets", help="set, list or delete the embedded backend's secrets")
    secrets.add_argument("action", choices=["set", "list", "delete"], help="set reads the value from stdin")
    secrets.add_argument("name", nargs="?", help="the secret's name (set, delete), e.g. GITHUB_TOKEN")
    secrets.add_argument("--data-dir", type=Path, default=None)
    image = sub.add_parser("image", help="show (or build) the devbox image of the embedded backend")
    image.add_argument("--build", action="store_true", help="build it now if it is missing (minutes, once per machine)")
    image.add_argument("--gc", action="store_true", help="remove old images no devbox, snapshot or blueprint uses")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="devbox-mcp: %(message)s")
    command = args.command or "serve"
    if command == "local-api":
        return _local_api(args)
    if command == "schemas":
        from .schemas import main as schemas_main

        return schemas_main(write=args.write, directory=args.dir)
    if command == "install":
        from .install import main as install_main

        return install_main(
            args.client,
            env_pairs=args.env,
            dry_run=args.dry_run,
            config_path=args.config_path,
            name=args.name,
        )
    if command == "secrets":
        from .secrets import main as secrets_main

        if args.action != "list" and not args.name:
            print(f"devbox-mcp: secrets {args.action} needs the secret's name", file=sys.stderr)
            return 2
        return secrets_main(args.action, args.name, args.data_dir or default_data_dir())
    if command == "image":
        from ..local.image import cli_main

        return cli_main(build=args.build, gc=args.gc)
    if command == "demo":
        from .demo import main as demo_main

        return demo_main()
    from .serve import main as serve_main

    transport = getattr(args, "transport", "stdio")
    http_options = {}
    if transport == "http":
        from ..transport.http_app import HttpConfigError, check_no_auth

        try:
            check_no_auth(args.no_auth, args.host)
        except HttpConfigError as exc:
            print(f"devbox-mcp: {exc}", file=sys.stderr)
            return 2
        http_options = {
            "stateless": args.stateless,
            "no_auth": args.no_auth,
            "allowed_hosts": args.allowed_host,
            "allowed_origins": args.allowed_origin,
        }
    return serve_main(
        transport=transport,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 8765),
        data_dir=getattr(args, "data_dir", None) or default_data_dir(),
        **http_options,
    )


def _local_api(args: argparse.Namespace) -> int:
    from ..local import service
    from ..local.config import LocalConfig, check_env
    from ..local.server import generate_api_key, serve_registered

    data_dir = (args.data_dir or default_data_dir()).absolute()
    if args.status or args.stop:
        return _local_api_control(service, data_dir, stop=args.stop)
    try:
        check_env()
    except ValueError as exc:
        print(f"devbox-mcp: {exc}", file=sys.stderr)
        return 2
    if args.idle_shutdown < 0:
        print("devbox-mcp: --idle-shutdown must be 0 (never) or a number of seconds", file=sys.stderr)
        return 2
    from_env = "DEVBOX_LOCAL_API_KEY" in os.environ and not args.spawned
    key = os.environ["DEVBOX_LOCAL_API_KEY"] if from_env else generate_api_key()

    def announce(state: service.ServiceState, tunnels: str) -> None:
        idle = f"; stops after {args.idle_shutdown:g} s idle" if args.idle_shutdown else ""
        print(f"devbox-mcp local API on {state.base_url} (pid {state.pid}{idle})", file=sys.stderr)
        scheme, _, host = tunnels.partition("://")
        print(f"  tunnels: {scheme}://{{port}}-{{tunnel_key}}.{host}/ (or {tunnels}/tunnel/{{port}}-{{tunnel_key}}/)",
              file=sys.stderr)  # fmt: skip
        if not args.spawned:
            print(f"  export RUNLOOP_BASE_URL={state.base_url}", file=sys.stderr)
            print(
                "  export RUNLOOP_API_KEY=" + ("$DEVBOX_LOCAL_API_KEY" if from_env else key),
                file=sys.stderr,
            )
        print(f"  data: {data_dir} (devbox-mcp processes using it share it)", file=sys.stderr, flush=True)

    config = LocalConfig(
        data_dir=data_dir, api_key=key, unsafe_no_sandbox=args.unsafe_no_sandbox,
        tunnel_host=args.tunnel_host, tunnel_port=args.tunnel_port,
    )  # fmt: skip
    try:
        serve_registered(
            config, args.host, args.port, idle_shutdown_seconds=args.idle_shutdown or None, announce=announce
        )
    except service.DataDirBusy as exc:
        stop = f"devbox-mcp local-api --stop --data-dir {data_dir}"
        print(f"devbox-mcp: {exc}; use it, or stop it with `{stop}`", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f"{args.host}:{args.port} (API) or {args.tunnel_host}:{args.tunnel_port} (tunnels)"
        print(f"devbox-mcp: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _local_api_control(service, data_dir: Path, *, stop: bool) -> int:  # noqa: ANN001 - the module
    """`local-api --status` / `--stop`: about the backend serving `data_dir` (never its key)."""
    state = service.read_state(data_dir)
    if not service.is_served(data_dir):
        if stop:
            service.stop(data_dir)  # removes a state file a crashed backend left
        print(f"no backend serves {data_dir}", file=sys.stderr)
        return 0 if stop else 1
    if stop:
        pid = service.stop(data_dir)
        print(f"stopped the backend{f' (pid {pid})' if pid else ''} of {data_dir}", file=sys.stderr)
        return 0
    if state is None:
        print(f"a backend is starting or stopping in {data_dir}", file=sys.stderr)
        return 0
    idle = f"; stops after {state.idle_shutdown_seconds:g} s idle" if state.idle_shutdown_seconds else ""
    print(f"backend pid {state.pid} at {state.base_url} serves {data_dir}{idle}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
