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

    local = sub.add_parser("local-api", help="serve the embedded Runloop-compatible API alone")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=8787)
    local.add_argument("--data-dir", type=Path, default=None)
    local.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run devboxes as plain host processes when bubblewrap is unavailable (no isolation)",
    )

    schemas = sub.add_parser("schemas", help="print or write the tool JSON schemas")
    schemas.add_argument("--write", action="store_true", help="write tool_schemas/<tool>.json")
    schemas.add_argument("--dir", type=Path, default=Path("tool_schemas"))

    sub.add_parser("demo", help="run the end-to-end demo against the embedded backend")
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
    if command == "demo":
        from .demo import main as demo_main

        return demo_main()
    from .serve import main as serve_main

    transport = getattr(args, "transport", "stdio")
    http_options = {}
    if transport == "http":
        from .http_app import HttpConfigError, check_no_auth

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
    from .local.config import LocalConfig
    from .local.server import generate_api_key, serve_forever

    key = os.environ.get("DEVBOX_LOCAL_API_KEY") or generate_api_key()
    data_dir = args.data_dir or default_data_dir()
    host = args.host
    url_host = f"[{host}]" if ":" in host else host
    print(f"devbox-mcp local API on http://{url_host}:{args.port}", file=sys.stderr)
    print(f"  export RUNLOOP_BASE_URL=http://{url_host}:{args.port}", file=sys.stderr)
    if "DEVBOX_LOCAL_API_KEY" not in os.environ:
        print(f"  export RUNLOOP_API_KEY={key}", file=sys.stderr)
    else:
        print("  export RUNLOOP_API_KEY=$DEVBOX_LOCAL_API_KEY", file=sys.stderr)
    print(f"  data: {data_dir}", file=sys.stderr, flush=True)
    config = LocalConfig(data_dir=data_dir, api_key=key, unsafe_no_sandbox=args.unsafe_no_sandbox)
    try:
        serve_forever(config, host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
